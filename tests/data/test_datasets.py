"""Dataset adapters: each layout lists its samples, names bad files, reads masks as train ids."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from segflow.config import DATASETS as CONFIG_DATASETS
from segflow.config import parse_params
from segflow.data.datasets import DATASETS, ade20k, open_dataset, open_dataset_by_name, voc
from segflow.data.datasets.ade20k import ADE20KDataset
from segflow.data.datasets.base import IGNORE_INDEX, read_label_png
from segflow.data.datasets.camvid import CamVidDataset
from segflow.data.datasets.cityscapes import CityscapesDataset
from segflow.data.datasets.folder import FolderDataset
from segflow.data.datasets.voc import VOCDataset
from segflow.errors import SegflowError
from tests.data import helpers

# -- every adapter ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["camvid", "voc", "cityscapes", "ade20k", "folder"])
def test_a_missing_root_is_an_error_naming_the_path_and_the_expected_layout(tmp_path, name):
    missing = tmp_path / "nowhere"
    with pytest.raises(SegflowError, match="expected") as err:
        open_dataset_by_name(name, missing)
    assert str(missing) in str(err.value)


@pytest.fixture(params=["camvid", "voc", "cityscapes", "ade20k", "folder"])
def any_adapter(request, tmp_path):
    make = {
        "camvid": lambda: CamVidDataset(helpers.make_camvid_like(tmp_path / "c")),
        "voc": lambda: VOCDataset(helpers.make_voc_like(tmp_path)),
        "cityscapes": lambda: CityscapesDataset(helpers.make_cityscapes_like(tmp_path / "cs")),
        "ade20k": lambda: ADE20KDataset(helpers.make_ade20k_like(tmp_path)),
        "folder": lambda: FolderDataset(classes_file=helpers.make_folder_dataset(tmp_path / "f")),
    }
    return make[request.param]()


def test_samples_are_unique_sorted_within_each_split_and_the_same_on_every_call(any_adapter):
    refs = list(any_adapter.samples())
    assert refs == list(any_adapter.samples())
    ids = [r.id for r in refs]
    assert len(set(ids)) == len(ids)
    for split in {r.split for r in refs}:
        in_split = [r.id for r in refs if r.split == split]
        assert in_split == sorted(in_split)
    assert all(r.image.is_file() and r.mask.is_file() for r in refs)


def test_masks_read_as_train_ids_inside_the_class_table_or_ignore(any_adapter):
    n = len(any_adapter.classes())
    for ref in any_adapter.samples():
        values = np.unique(any_adapter.read_mask(ref.mask))
        assert all(v < n or v == IGNORE_INDEX for v in values), (ref.mask, values)
        assert any_adapter.read_image(ref.image).shape[:2] == any_adapter.read_mask(ref.mask).shape


def test_class_tables_number_classes_from_zero_with_rgb_colours(any_adapter):
    classes = any_adapter.classes()
    assert [c.id for c in classes] == list(range(len(classes)))
    assert all(len(c.color) == 3 and all(0 <= v <= 255 for v in c.color) for c in classes)


# -- open_dataset -------------------------------------------------------------------------------


def test_the_adapter_names_are_the_ones_params_yaml_accepts():
    assert set(DATASETS) == set(CONFIG_DATASETS)


def test_an_unknown_dataset_name_is_an_error_naming_the_field_and_the_known_names():
    with pytest.raises(SegflowError, match=r"dataset\.name.*'kitti'.*camvid.*folder"):
        open_dataset_by_name("kitti", "/data")


def test_a_real_dataset_without_a_root_is_an_error_naming_dataset_root():
    with pytest.raises(SegflowError, match=r"dataset\.root"):
        open_dataset_by_name("camvid", None)


def test_open_dataset_takes_the_root_from_segflow_data_root_over_params(camvid_root, monkeypatch):
    params = parse_params({"dataset": {"name": "camvid", "root": "/not/here"}})
    monkeypatch.setenv("SEGFLOW_DATA_ROOT", str(camvid_root))
    adapter = open_dataset(params)
    assert isinstance(adapter, CamVidDataset)
    assert adapter.root == camvid_root


def test_open_dataset_passes_the_folder_class_file_and_the_voc_train_aug_option(
    tmp_path, monkeypatch
):
    monkeypatch.delenv("SEGFLOW_DATA_ROOT", raising=False)
    classes_file = helpers.make_folder_dataset(tmp_path / "f", classes=4)
    params = parse_params(
        {
            "dataset": {
                "name": "folder",
                "root": str(classes_file.parent),
                "classes_file": str(classes_file),
            }
        }
    )
    assert len(open_dataset(params).classes()) == 4
    devkit = helpers.make_voc_like(tmp_path / "v")
    params = parse_params({"dataset": {"name": "voc", "root": str(devkit), "voc_train_aug": True}})
    adapter = open_dataset(params)
    assert isinstance(adapter, VOCDataset) and adapter.train_aug


def test_open_dataset_reads_the_synthetic_dataset_from_dataset_root_with_synthetic_sizes(
    monkeypatch,
):
    monkeypatch.delenv("SEGFLOW_DATA_ROOT", raising=False)
    params = parse_params(
        {"synthetic": {"num_train": 5, "num_val": 2, "num_test": 1, "height": 40}}
    )
    adapter = open_dataset(params)
    assert adapter.name == "synthetic"
    assert adapter.out_dir == Path("data/synthetic")
    assert adapter.counts == {"train": 5, "val": 2, "test": 1}
    assert adapter.height == 40


# -- camvid -------------------------------------------------------------------------------------


def test_camvid_resolves_foreign_list_paths_by_file_name(camvid_root):
    refs = list(CamVidDataset(camvid_root).samples())
    assert Counter(r.split for r in refs) == {"train": 4, "val": 2}
    assert [r.split for r in refs] == ["train"] * 4 + ["val"] * 2  # train first, then val
    for r in refs:
        assert r.image == camvid_root / r.split / f"{r.id}.png"
        assert r.mask == camvid_root / f"{r.split}annot" / f"{r.id}.png"


def test_camvid_without_list_files_lists_each_split_directory(tmp_path):
    root = helpers.make_camvid_like(tmp_path, n_train=3, n_val=1, n_test=2, with_lists=False)
    refs = list(CamVidDataset(root).samples())
    assert Counter(r.split for r in refs) == {"train": 3, "val": 1, "test": 2}


def test_camvid_maps_unlabelled_to_ignore_and_keeps_other_values_for_validation(camvid_root):
    lut = CamVidDataset(camvid_root).label_lut
    assert lut[11] == IGNORE_INDEX
    assert [lut[v] for v in (0, 5, 10, 12, 200, 255)] == [0, 5, 10, 12, 200, 255]


def test_camvid_image_without_mask_is_an_error_naming_the_image_and_the_expected_mask(camvid_root):
    victim = camvid_root / "valannot" / sorted(p.name for p in (camvid_root / "val").iterdir())[0]
    victim.unlink()
    with pytest.raises(SegflowError, match="has no mask") as err:
        list(CamVidDataset(camvid_root).samples())
    assert str(victim) in str(err.value)
    assert str(camvid_root / "val" / victim.name) in str(err.value)


def test_camvid_list_naming_a_missing_image_is_an_error_naming_the_list_line(camvid_root):
    with (camvid_root / "train.txt").open("a") as fh:
        fh.write("/SegNet/CamVid/train/ghost.png /SegNet/CamVid/trainannot/ghost.png\n")
    with pytest.raises(SegflowError, match=r"train\.txt:5: .*ghost\.png"):
        list(CamVidDataset(camvid_root).samples())


def test_camvid_split_dir_without_its_annotation_dir_is_an_error(camvid_root):
    for p in (camvid_root / "valannot").iterdir():
        p.unlink()
    (camvid_root / "valannot").rmdir()
    with pytest.raises(SegflowError, match="valannot"):
        list(CamVidDataset(camvid_root).samples())


def test_camvid_shared_copy_has_367_train_and_101_val_samples_and_11_classes(camvid_shared):
    adapter = CamVidDataset(camvid_shared)
    refs = list(adapter.samples())
    assert Counter(r.split for r in refs) == {"train": 367, "val": 101}
    assert [c.name for c in adapter.classes()][:3] == ["Sky", "Building", "Pole"]
    assert len(adapter.classes()) == 11
    assert adapter.classes()[4].color == (60, 40, 222)


def test_camvid_shared_copy_reads_void_as_ignore_and_the_rest_unchanged(camvid_shared):
    adapter = CamVidDataset(camvid_shared)
    ref = next(adapter.samples())
    raw = read_label_png(ref.mask)
    assert (raw == 11).any()
    mask = adapter.read_mask(ref.mask)
    assert (mask[raw == 11] == IGNORE_INDEX).all()
    assert (mask[raw != 11] == raw[raw != 11]).all()
    assert mask.max() == IGNORE_INDEX and mask[mask != IGNORE_INDEX].max() <= 10


# -- voc ----------------------------------------------------------------------------------------


def test_voc_reads_palette_masks_as_class_indices_keeping_the_255_border(voc_devkit):
    adapter = VOCDataset(voc_devkit)
    ref = next(r for r in adapter.samples() if r.split == "train")
    with Image.open(ref.mask) as img:
        assert img.mode == "P"  # decoded to colour, the values would be palette RGB instead
    mask = adapter.read_mask(ref.mask)
    aug = read_label_png(voc_devkit / "VOC2012" / "SegmentationClassAug" / f"{ref.id}.png")
    np.testing.assert_array_equal(mask, aug)  # the helper wrote the same indices to both
    assert (mask[0] == IGNORE_INDEX).all()
    assert 15 in mask  # person


def test_voc_accepts_the_vocdevkit_or_the_voc2012_directory_as_root(voc_devkit):
    a = list(VOCDataset(voc_devkit).samples())
    b = list(VOCDataset(voc_devkit / "VOC2012").samples())
    assert a == b
    assert [(r.id, r.split) for r in a] == [
        ("2007_000032", "train"),
        ("2007_000039", "train"),
        ("2007_000033", "val"),
    ]


def test_voc_train_aug_reads_sbd_masks_and_keeps_val_ids_out_of_train(voc_devkit):
    refs = list(VOCDataset(voc_devkit, train_aug=True).samples())
    train = [r for r in refs if r.split == "train"]
    assert [r.id for r in train] == ["2007_000032", "2007_000039", "2008_000002"]
    assert all(r.mask.parent.name == "SegmentationClassAug" for r in train)
    assert [r.id for r in refs if r.split == "val"] == ["2007_000033"]


def test_voc_has_21_classes_in_the_devkit_colours():
    classes = voc.CLASSES
    assert len(classes) == 21
    assert (classes[0].name, classes[0].color) == ("background", (0, 0, 0))
    assert (classes[1].name, classes[1].color) == ("aeroplane", (128, 0, 0))
    assert (classes[15].name, classes[15].color) == ("person", (192, 128, 128))
    assert (classes[20].name, classes[20].color) == ("tvmonitor", (0, 64, 128))


def test_voc_rgb_mask_is_an_error_naming_the_file(voc_devkit):
    adapter = VOCDataset(voc_devkit)
    ref = next(adapter.samples())
    Image.new("RGB", (4, 4)).save(ref.mask)
    with pytest.raises(SegflowError, match=r"mode is RGB"):
        adapter.read_mask(ref.mask)


def test_voc_missing_split_list_is_an_error_naming_it(voc_devkit):
    (voc_devkit / "VOC2012" / "ImageSets" / "Segmentation" / "val.txt").unlink()
    with pytest.raises(SegflowError, match=r"val\.txt: split list not found"):
        list(VOCDataset(voc_devkit).samples())


# -- cityscapes ---------------------------------------------------------------------------------


def test_cityscapes_maps_label_ids_to_the_19_train_ids_and_the_rest_to_ignore():
    lut = CityscapesDataset.label_lut
    assert lut[7] == 0  # road
    assert lut[26] == 13  # car
    assert lut[24] == 11 and lut[33] == 18  # person, bicycle
    for ignored in (0, 1, 6, 9, 14, 29, 30, 255):  # unlabeled .. trailer
        assert lut[ignored] == IGNORE_INDEX
    assert sorted(set(lut.tolist()) - {IGNORE_INDEX}) == list(range(19))


def test_cityscapes_lists_cities_and_reads_masks_as_train_ids(cityscapes_root):
    adapter = CityscapesDataset(cityscapes_root)
    refs = list(adapter.samples())
    assert [(r.split, r.id) for r in refs] == [
        ("train", "aachen_000000_000019"),
        ("train", "bochum_000000_000007"),
        ("val", "lindau_000000_000001"),
    ]
    assert set(np.unique(adapter.read_mask(refs[0].mask))) == {0, 13, IGNORE_INDEX}
    assert len(adapter.classes()) == 19
    assert (adapter.classes()[13].name, adapter.classes()[13].color) == ("car", (0, 0, 142))


def test_cityscapes_image_without_mask_is_an_error_naming_the_image(cityscapes_root):
    mask = cityscapes_root / "gtFine/val/lindau/lindau_000000_000001_gtFine_labelIds.png"
    mask.unlink()
    with pytest.raises(SegflowError, match=r"lindau_000000_000001_leftImg8bit\.png has no mask"):
        list(CityscapesDataset(cityscapes_root).samples())


# -- ade20k -------------------------------------------------------------------------------------


def test_ade20k_shifts_labels_down_by_one_and_ignores_zero():
    lut = ADE20KDataset.label_lut
    assert lut[0] == IGNORE_INDEX
    assert lut[1] == 0
    assert lut[150] == 149
    assert lut[151] == 150  # outside the table: validation reports it


def test_ade20k_names_splits_train_and_val_and_accepts_the_parent_as_root(ade20k_dir):
    a = list(ADE20KDataset(ade20k_dir).samples())
    assert a == list(ADE20KDataset(ade20k_dir.parent).samples())
    assert [(r.split, r.id) for r in a] == [
        ("train", "ADE_train_00000001"),
        ("train", "ADE_train_00000002"),
        ("val", "ADE_val_00000001"),
    ]
    mask = ADE20KDataset(ade20k_dir).read_mask(a[0].mask)
    assert set(np.unique(mask)) == {0, 149, IGNORE_INDEX}


def test_ade20k_has_the_150_challenge_classes():
    classes = ade20k.CLASSES
    assert len(classes) == 150
    assert (classes[0].name, classes[0].color) == ("wall", (120, 120, 120))
    assert classes[12].name == "person" and classes[149].name == "flag"


# -- folder -------------------------------------------------------------------------------------


def test_folder_takes_splits_from_subdirectories_and_classes_from_the_yaml(folder_classes_file):
    adapter = FolderDataset(classes_file=folder_classes_file)
    refs = list(adapter.samples())
    assert [r.split for r in refs] == ["train"] * 4 + ["val"] * 2 + ["test"] * 2
    assert refs[0].id == "train_0"
    table = yaml.safe_load(folder_classes_file.read_text())
    # Without `value`, a class's stored mask value is its id; the manifest records it.
    assert [c.to_dict() for c in adapter.classes()] == [{**c, "values": [c["id"]]} for c in table]


def test_folder_takes_splits_from_split_lists_when_images_lie_flat(tmp_path):
    classes_file = helpers.make_folder_dataset(
        tmp_path, n_train=3, n_val=1, n_test=0, split_lists=True
    )
    (tmp_path / "splits" / "train.txt").write_text("train_2\ntrain_0\n")  # train_1 left out
    refs = list(FolderDataset(tmp_path, classes_file).samples())
    assert [(r.split, r.id) for r in refs] == [
        ("train", "train_0"),
        ("train", "train_2"),
        ("val", "val_0"),
    ]


def test_folder_image_without_mask_is_an_error_naming_the_image(folder_classes_file):
    root = folder_classes_file.parent
    (root / "masks" / "val" / "val_1.png").unlink()
    with pytest.raises(SegflowError, match="has no mask") as err:
        list(FolderDataset(root).samples())
    assert str(root / "images" / "val" / "val_1.png") in str(err.value)


def test_folder_mask_without_image_is_an_error_naming_the_mask(folder_classes_file):
    root = folder_classes_file.parent
    (root / "images" / "test" / "test_0.png").unlink()
    with pytest.raises(SegflowError, match="has no image") as err:
        list(FolderDataset(root).samples())
    assert str(root / "masks" / "test" / "test_0.png") in str(err.value)


def test_folder_same_stem_in_two_splits_is_an_error(folder_classes_file):
    root = folder_classes_file.parent
    for kind in ("images", "masks"):
        (root / kind / "val" / "train_0.png").write_bytes(
            (root / kind / "train" / "train_0.png").read_bytes()
        )
    with pytest.raises(SegflowError, match="'train_0' is also in another split"):
        list(FolderDataset(root).samples())


@pytest.mark.parametrize(
    ("table", "rule"),
    [
        (
            [
                {"id": 0, "name": "a", "color": [0, 0, 0]},
                {"id": 2, "name": "b", "color": [1, 1, 1]},
            ],
            "ids must be",
        ),
        ([{"id": 0, "name": "a", "color": [0, 0, 300]}], "color must be"),
        ([{"id": 0, "name": "a"}], "keys id, name, color"),
        ([], "no classes; expected a YAML mapping `classes:`"),
        ([{"id": 0, "name": "a", "color": [0, 0, 0], "value": 256}], "integers 0..255"),
        ([{"id": 0, "name": "a", "color": [0, 0, 0], "value": []}], "at least one mask value"),
        (
            [
                {"id": 0, "name": "a", "color": [0, 0, 0], "value": [0, 7]},
                {"id": 1, "name": "b", "color": [1, 1, 1], "value": 7},
            ],
            "mask value 7 is given to both 'a' and 'b'",
        ),
        (
            {"classes": [{"id": 0, "name": "a", "color": [0, 0, 0]}], "ignore": [0]},
            "ignore: mask value 0 is also class 'a'",
        ),
        ({"classes": [{"id": 0, "name": "a", "color": [0, 0, 0]}], "ignor": [9]}, "ignor"),
    ],
)
def test_folder_bad_class_table_is_an_error_naming_the_file_and_the_rule(
    folder_classes_file, table, rule
):
    folder_classes_file.write_text(yaml.safe_dump(table))
    with pytest.raises(SegflowError, match=rule) as err:
        FolderDataset(classes_file=folder_classes_file)
    assert str(folder_classes_file) in str(err.value)
    assert err.value.field == "dataset.classes_file"  # the key check-params blames


def _binary_folder(root: Path, table: object) -> FolderDataset:
    """One train sample whose mask stores 0 (background), 255 (cell) and 7 in a corner."""
    mask = np.zeros((8, 10), np.uint8)
    mask[:, 5:] = 255
    mask[0, 0] = 7
    helpers.write_rgb(root / "images" / "train" / "a.png", np.zeros((8, 10, 3), np.uint8))
    helpers.write_gray(root / "masks" / "train" / "a.png", mask)
    (root / "classes.yaml").write_text(yaml.safe_dump(table))
    return FolderDataset(root)


def test_folder_class_table_maps_stored_mask_values_to_classes(tmp_path):
    """0/255 binary masks: `value` says 255 is the cell; several values may mean one class."""
    table = {
        "classes": [
            {"id": 0, "name": "background", "color": [0, 0, 0], "value": [0, 7]},
            {"id": 1, "name": "cell", "color": [255, 255, 255], "value": 255},
        ]
    }
    adapter = _binary_folder(tmp_path, table)
    (ref,) = adapter.samples()
    mask = adapter.read_mask(ref.mask)
    assert mask[0, 0] == 0 and set(np.unique(mask[:, :5])) == {0}
    assert set(np.unique(mask[:, 5:])) == {1}
    assert adapter.ignore_values == ()  # 255 is a class here, so nothing is ignored by default
    assert [c.values for c in adapter.classes()] == [(0, 7), (255,)]


def test_folder_ignore_values_are_settable_and_other_values_are_errors(tmp_path):
    table = {
        "classes": [{"id": 0, "name": "cell", "color": [9, 9, 9], "value": 255}],
        "ignore": [0],
    }
    adapter = _binary_folder(tmp_path, table)
    (ref,) = adapter.samples()
    with pytest.raises(SegflowError, match=r"a.png: mask values \[7\] are not in the folder class"):
        adapter.read_mask(ref.mask)
    table["ignore"] = [0, 7]
    mask = _binary_folder(tmp_path, table).read_mask(ref.mask)
    assert set(np.unique(mask[:, :5])) == {IGNORE_INDEX} and set(np.unique(mask[:, 5:])) == {0}


def test_every_dataset_name_params_yaml_accepts_has_an_adapter():
    # config.DATASETS is the one list of dataset.name values; the adapters map each to a class.
    from segflow.config import DATASETS
    from segflow.data.datasets import adapter_class

    for name in DATASETS:
        assert adapter_class(name).__name__.endswith("Dataset"), name
