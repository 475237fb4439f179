"""What the model stages load and run: aesthetic scorer, captioner, subject detection and segmentation."""
