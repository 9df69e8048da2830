"""The two approaches segmentation started from, scored exactly as the zoo's networks are.

* :mod:`.patch_classifier`: a small CNN classifies the centre pixel of a window around each
  pixel (sliding-window patch classification, as before FCNs: correct, but it recomputes the
  overlapping windows' features once per window; ``stride`` trades that cost for resolution).
* :mod:`.split_and_merge`: classical region segmentation, no deep learning: a quadtree splits
  the image into colour-homogeneous blocks, similar neighbours merge, and a softmax regression
  over region features (colour, texture, position, size, a colour histogram) names each region.

Both train on the train split of the shards and are scored by :mod:`.scoring` with segflow's
confusion matrix and metrics at the masks' native resolution, with the milliseconds per image of
the whole path; :mod:`.run` is the ``segflow baseline NAME`` command's work (one MLflow run).
"""
