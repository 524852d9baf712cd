"""Drawings: small images enlarged, masks and boxes where the instances are, readable tags
inside the image, crowd regions grey."""

import numpy as np
import pytest

from maskrcnn_jax.inference import visualize


@pytest.mark.parametrize('height, width, scale', [
    (128, 128, 4), (96, 96, 6), (100, 700, 5), (480, 640, 2), (512, 700, 1),
    (1000, 1500, 1), (20, 1000, 4)])
def test_drawing_scale(height, width, scale):
  assert visualize.drawing_scale(height, width) == scale
  if scale > 1:  # enlarged: the shorter side reaches MIN_SIDE unless the longer one stops it
    assert (min(height, width) * scale >= visualize.MIN_SIDE
            or max(height, width) * (scale + 1) > visualize.MAX_SIDE)
  assert max(height, width) * scale <= max(visualize.MAX_SIDE, max(height, width))


def _tag_rows_and_columns(drawing, colour):
  """Rows and columns of the drawing holding the tag background of a `colour` instance."""
  ys, xs = np.nonzero(np.all(drawing == np.array(colour) // 2, axis=-1))
  return ys, xs


def test_small_image_detections_are_enlarged_with_readable_tags_inside():
  image = np.full((128, 128, 3), 40, np.uint8)
  mask = np.zeros((128, 128), bool)
  mask[10:30, 100:128] = True
  detections = {'boxes': np.array([[100.0, 10.0, 128.0, 30.0], [5.0, 60.0, 40.0, 90.0]]),
                'scores': np.array([0.9, 0.3]), 'classes': np.array([7, 9]),
                'masks': np.stack([mask, ~mask])}
  drawing = np.asarray(visualize.draw_detections(image, detections,
                                                 {7: 'a long category name'}, 0.5))
  assert drawing.shape == (512, 512, 3)
  colour = np.array(visualize._colour(7))  # pylint: disable=protected-access
  # Mask pixel (20, 110) is the 4 x 4 block from (80, 440), blended 50/50.
  assert np.all(drawing[80:84, 440:444] == (0.5 * 40 + 0.5 * colour).astype(np.uint8))
  # The box's left edge at x = 100 * 4, between its top (40) and bottom (120).
  assert np.all(drawing[60:100, 400] == colour)
  # Its tag sits above the box, inside the image although the box reaches the right
  # edge, and its text is tall enough to read (white pixels on >= 10 rows).
  ys, xs = _tag_rows_and_columns(drawing, colour)
  assert ys.size and ys.min() >= 0 and ys.max() < 40 and xs.max() < 512
  assert xs.max() - xs.min() > 150  # 'a long category name 0.90' at >= 14 pixels
  tag = drawing[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
  assert np.count_nonzero(np.any(np.all(tag > 200, axis=-1), axis=1)) >= 10
  # The detection under min_score is not drawn: its region keeps the image's pixels.
  assert np.all(drawing[300:340, 60:100] == 40)


def test_tag_of_a_box_at_the_top_left_stays_inside_the_image():
  image = np.zeros((64, 64, 3), np.uint8)
  detections = {'boxes': np.array([[0.0, 0.0, 10.0, 10.0]]), 'scores': np.array([1.0]),
                'classes': np.array([3])}
  drawing = np.asarray(visualize.draw_detections(image, detections, {3: 'name'}, 0.0))
  assert drawing.shape == (512, 512, 3)
  ys, xs = _tag_rows_and_columns(drawing, visualize._colour(3))  # pylint: disable=protected-access
  assert ys.size and ys.min() == 0 and xs.min() == 0  # inside the box, not above it


def test_large_images_keep_their_size_and_keypoints_are_drawn():
  image = np.zeros((600, 800, 3), np.uint8)
  detections = {'boxes': np.array([[100.0, 100.0, 300.0, 400.0]]), 'scores': np.array([0.8]),
                'classes': np.array([1]),
                'keypoints': np.array([[[200.0, 250.0, 1.0], [150.0, 150.0, 0.0]]])}
  drawing = np.asarray(visualize.draw_detections(image, detections, {}, 0.5))
  assert drawing.shape == (600, 800, 3)
  colour = visualize._colour(1)  # pylint: disable=protected-access
  assert np.all(drawing[250, 200] == colour)  # the visible keypoint's dot
  assert np.all(drawing[150, 150] == 0)  # an invisible one is not drawn


def test_draw_annotations_marks_crowd_regions():
  image = np.full((100, 120, 3), 200, np.uint8)
  masks = np.zeros((2, 100, 120), np.uint8)
  masks[0, 20:40, 10:50] = 1
  masks[1, 60:90, 60:110] = 1
  boxes = np.array([[10, 20, 50, 40], [60, 60, 110, 90]], np.float32)
  keypoints = np.zeros((2, 1, 3), np.float32)
  keypoints[0, 0] = [30, 30, 2]  # COCO: the pixel in column 30, row 30
  drawing = np.asarray(visualize.draw_annotations(
      image, boxes, np.array([1, 2]), masks, {1: 'cat', 2: 'people'},
      is_crowd=np.array([False, True]), keypoints=keypoints))
  scale = visualize.drawing_scale(100, 120)
  assert scale == 6 and drawing.shape == (600, 720, 3)
  colour = np.array(visualize._colour(1))  # pylint: disable=protected-access
  np.testing.assert_array_equal(drawing[6 * 25, 6 * 20], (100 + 0.5 * colour).astype(np.uint8))
  np.testing.assert_array_equal(drawing[6 * 75, 6 * 80], [180, 180, 180])  # grey crowd
  assert _tag_rows_and_columns(drawing, (160, 160, 160))[0].size  # the crowd's tag
  np.testing.assert_array_equal(drawing[6 * 30 + 3, 6 * 30 + 3], colour)  # the keypoint
  np.testing.assert_array_equal(drawing[6 * 5, 6 * 100], [200, 200, 200])  # background
