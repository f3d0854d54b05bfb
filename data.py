"""
Everything between image files on disk and the batches the model sees: YOLO-format datasets,
label checks and cache, letterbox, and the augmentation stack (numpy + OpenCV only).
"""
import math

import cv2
import numpy as np

cv2.setNumThreads(0)  # OpenCV's own threads fight with the loader's worker processes


def letterbox(img, new_shape=640, color=(114, 114, 114), auto=True, scaleup=True, stride=32):
    """Resize keeping the aspect ratio, then pad to new_shape (or, with auto, to the next multiple of
    stride). Returns the image, the scale ratio and the (left, top) padding, both as floats."""
    h, w = img.shape[:2]
    new_h, new_w = (new_shape, new_shape) if isinstance(new_shape, int) else new_shape
    r = min(new_h / h, new_w / w)
    if not scaleup:  # only shrink (for validation: upscaling does not help mAP)
        r = min(r, 1.0)
    unpad_w, unpad_h = int(round(w * r)), int(round(h * r))
    dw, dh = new_w - unpad_w, new_h - unpad_h
    if auto:  # minimal rectangle: pad only up to the stride
        dw, dh = dw % stride, dh % stride
    dw, dh = dw / 2, dh / 2
    if (w, h) != (unpad_w, unpad_h):
        img = cv2.resize(img, (unpad_w, unpad_h), interpolation=cv2.INTER_LINEAR)
    top, bottom = int(round(dh - 0.1)), int(round(dh + 0.1))
    left, right = int(round(dw - 0.1)), int(round(dw + 0.1))
    img = cv2.copyMakeBorder(img, top, bottom, left, right, cv2.BORDER_CONSTANT, value=color)
    return img, r, (dw, dh)
