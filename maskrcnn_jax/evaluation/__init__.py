"""COCO evaluation: sharded inference, host paste and RLE, COCOeval."""
