"""segflow: semantic-segmentation training pipeline."""
