"""The reference gallery: references found for each LR image in a folder of photos (see docs/gallery.md)."""
