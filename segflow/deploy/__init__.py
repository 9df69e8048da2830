"""Taking the served model out of the pipeline: export and prediction at scale.

export.py writes the served path's network part (:mod:`.graph`, with the training-scale resize
of :mod:`.resize`) as an ONNX or TorchScript file plus its spec; registered.py logs the ONNX
export beside a registered version; batch.py runs the served path over many images on Ray
Data (:mod:`.inputs` lists them, :mod:`.manifest` records what was written).
"""
