"""
YOLOv5 through torch.hub, the original's Python API:

    model = torch.hub.load('path/to/nano-yolov5', 'custom', path='best.pt', source='local')  # .torchscript, .onnx too
    model = torch.hub.load('OWNER/nano-yolov5', 'yolov5s')  # source='github'; official weights, downloaded if missing
    results = model(['bus.jpg', Image.open('zidane.jpg'), cv2.imread('dog.jpg')[..., ::-1]], size=640)
    results.print()  # image 1/3: 1080x810 4 persons, 1 bus ...
    results.xyxy[0]  # (n, 6) tensor of the first image: x1, y1, x2, y2, confidence, class (pixels)

The model takes a file name, a URL, a PIL image, a numpy array (h, w, 3) in RGB order as the original documents it
(an array from cv2.imread is BGR: pass img[..., ::-1]), or a list of them; a torch tensor goes to the model as it is.
Each image is letterboxed as detect.py does, and gets detect.py's detections: the images of a list that share a
letterbox shape run as one batch, the others in batches of their own (the original pads all to the largest).
This file owns that batching and the results object; the rest is model.py's predict, NMS and boxes, and export.py's
load_any. No .pandas() (pandas is not a dependency: .xyxy and the others hold the same numbers), no
.show() (OpenCV here is headless: .render() gives the pictures, .save() writes them).
On top of data.py, model.py and export.py.
"""
import http.client
import time
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn as nn
from PIL import Image, ImageOps

from data import letterbox
from export import load_any
from model import YOLOv5, non_max_suppression, predict, scale_boxes
from support.checkpoints import read_checkpoint, transfer
from support.cli import check_img_size, half_dtype, select_device
from support.datasets import xyxy2xywh
from support.plots import PALETTE, draw_box
from support.files import save_image
from support.runs import run_dir

dependencies = ['cv2', 'numpy', 'PIL', 'torch']  # torch.hub checks that these import


MAX_DOWNLOAD = 100 * 2 ** 20  # bytes of an image fetched by URL, and seconds it may take
DOWNLOAD_SECONDS = 60


def fetch(url):
    """The bytes at url, bounded in time and size: a server that drips or sends an endless body ends in a
    ValueError naming the URL, as one that answers an error or not at all does."""
    start = time.monotonic()
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            chunks, size = [], 0
            while chunk := r.read(1 << 16):
                chunks.append(chunk)
                size += len(chunk)
                if size > MAX_DOWNLOAD:
                    raise ValueError(f'more than {MAX_DOWNLOAD >> 20} MB: not an image')
                if time.monotonic() - start > DOWNLOAD_SECONDS:
                    raise ValueError(f'slower than {DOWNLOAD_SECONDS} s')
    except urllib.error.HTTPError as e:
        raise ValueError(f'{url}: the server answered {e.code} {e.reason}') from None
    except (OSError, ValueError, http.client.HTTPException) as e:  # URLError, timeouts, a cut connection
        raise ValueError(f'{url}: cannot fetch it ({getattr(e, "reason", None) or e})') from None
    return b''.join(chunks)


def rgb_array(im, name):
    """An image array as the model takes it: (h, w, 3) uint8 RGB. Grey (h, w) or (h, w, 1), RGBA, (c, h, w) as a
    loader gives it, 16-bit (scaled to 8), bool, and floats in [0, 1] or [0, 255] are converted; anything else is a
    ValueError naming it."""
    im = np.asarray(im)
    if im.dtype == object or im.ndim not in (2, 3):
        raise ValueError(f'{name}: not an image: an array of shape {im.shape} ({im.dtype})')
    if im.ndim == 3 and im.shape[0] in (1, 3, 4) and im.shape[2] not in (1, 3, 4):  # (c, h, w)
        im = im.transpose(1, 2, 0)
    if im.ndim == 3 and im.shape[2] == 1:
        im = im[..., 0]
    if im.ndim == 3 and im.shape[2] not in (3, 4) or min(im.shape[:2]) < 1:
        raise ValueError(f'{name}: not an image: an array of shape {im.shape}')
    if im.dtype == np.uint16:  # 16-bit, as 8-bit: the same picture, the same boxes
        im = (im >> 8).astype(np.uint8)
    elif im.dtype == bool:
        im = im.astype(np.uint8) * 255
    elif im.dtype.kind == 'f':
        if not np.isfinite(im).all():
            raise ValueError(f'{name}: its values are not all finite')
        im = (im * 255 if im.max() <= 1 else im).clip(0, 255).round().astype(np.uint8)
    elif im.dtype != np.uint8:
        if im.min() < 0 or im.max() > 255:
            raise ValueError(f'{name}: values from {im.min()} to {im.max()}: not 8 or 16 bits')
        im = im.astype(np.uint8)
    if im.ndim == 2:  # grey
        im = np.repeat(im[..., None], 3, 2)
    return np.ascontiguousarray(im[..., :3])  # (RGBA: its alpha left out)


def read_image(im, i):
    """(an RGB array (h, w, 3), the file name its picture is saved under) of one input, the i-th."""
    name = f'image{i}'
    if im is None:
        raise ValueError(f'{name}: None is not an image')
    if isinstance(im, (str, Path)):
        name = str(im)
        if name.startswith(('http://', 'https://')):
            im = cv2.imdecode(np.frombuffer(fetch(name), np.uint8), cv2.IMREAD_COLOR)
        else:
            im = cv2.imread(name) if Path(name).is_file() else None  # as detect.py reads it (EXIF applied)
        if im is None:
            raise ValueError(f'{name}: cannot read an image there')
        im = im[..., ::-1]  # BGR -> RGB
    elif isinstance(im, Image.Image):
        name = getattr(im, 'filename', '') or name
        im = ImageOps.exif_transpose(im)
        im = np.asarray(im if im.mode in ('L', 'RGB', 'I;16', 'I;16B', 'F') else im.convert('RGB'))
        if im.dtype == np.float32:  # PIL's F: values of 0-255
            im = im.clip(0, 255).astype(np.uint8)
    return rgb_array(im, name), Path(name).with_suffix('.jpg').name


class AutoShape(nn.Module):
    """A model that takes images as they come (see the top of this file): model(images, size=640) -> Detections.
    The NMS settings are attributes, with the original's names and defaults; amp: 16-bit inference (--half)."""
    conf, iou, classes, agnostic, multi_label, max_det, amp = 0.25, 0.45, None, False, False, 1000, False

    def __init__(self, model):
        super().__init__()
        self.model, self.names = model.eval(), model.names

    @torch.inference_mode()
    def forward(self, ims, size=640):
        device = next(self.model.parameters()).device
        if isinstance(ims, torch.Tensor):  # a batch already letterboxed: the model's own outputs, as in the original
            return self.model(ims.to(device))
        t0 = time.perf_counter()
        ims = ims if isinstance(ims, (list, tuple)) else [ims]
        sizes = list(size) if isinstance(size, (list, tuple)) else [size]
        if not ims:
            raise ValueError('no images given')
        if not sizes or not all(type(s) is int and 1 <= s <= 8192 for s in sizes):
            raise ValueError(f'size={size!r}: an image size is a number of pixels from 1 to 8192')
        ims, files = zip(*(read_image(im, i) for i, im in enumerate(ims)))
        files = [f if files.count(f) == 1 else f'{Path(f).stem}_{i}.jpg' for i, f in enumerate(files)]  # no clashes
        stride = self.model.max_stride  # 64 for the P6 models
        size = check_img_size(max(sizes), stride=stride)
        boxed = [letterbox(im, size, stride=stride)[0] for im in ims]  # each as detect.py letterboxes it
        batches = {}  # the images of one letterbox shape run as one batch: none is padded for another's sake
        for i, b in enumerate(boxed):
            batches.setdefault(b.shape[:2], []).append(i)
        dets, shapes, dt = [None] * len(ims), [], [time.perf_counter() - t0, 0.0, 0.0]  # pre-process, inference, NMS
        for shape, idx in batches.items():
            t1 = time.perf_counter()
            rgb = [torch.from_numpy(np.ascontiguousarray(boxed[i])).permute(2, 0, 1) for i in idx]  # RGB already
            x = torch.stack(rgb).to(device).float() / 255
            t2 = time.perf_counter()
            pred = torch.cat([p for p, _ in predict(self.model, x, half_dtype(device) if self.amp else None)])
            t3 = time.perf_counter()
            nms = non_max_suppression(pred, self.conf, self.iou, self.classes, self.agnostic, self.multi_label,
                                      max_det=self.max_det)
            for i, det in zip(idx, nms):
                det[:, :4] = scale_boxes(det[:, :4], shape, ims[i].shape[:2])
                dets[i] = det
            dt = [a + b for a, b in zip(dt, (t2 - t1, t3 - t2, time.perf_counter() - t3))]
            shapes.append(tuple(x.shape))
        return Detections(ims, dets, files, dt, self.names, shapes[0] if len(shapes) == 1 else shapes)


def claim(save_dir, exist_ok):
    """run_dir's folder, with an OSError (not an exit) where it cannot be made: this is a Python API."""
    try:
        return run_dir(Path(save_dir).parent, Path(save_dir).name, exist_ok)
    except SystemExit as e:
        raise OSError(str(e).removeprefix('ERROR: ')) from None


class Detections:
    """The results of one call, with the original's names. xyxy, xywh (pixels), xyxyn, xywhn (fractions of the image):
    lists of (n, 6) tensors per image, [box, confidence, class]; names, ims (RGB arrays), files, n (images), t (ms per
    image: pre-process, inference, NMS), s (the batch's shape; a list of them where the images' letterbox shapes
    differ, each shape a batch of its own). print(), save(), render(), crop(), len(), str()."""
    def __init__(self, ims, pred, files, times, names, shape):
        self.ims, self.pred, self.files, self.names = list(ims), pred, list(files), names
        self.n, self.s = len(ims), tuple(shape)
        self.t = tuple(t * 1e3 / self.n for t in times)
        gains = [torch.tensor([im.shape[1], im.shape[0]] * 2 + [1, 1], device=p.device) for im, p in zip(ims, pred)]
        self.xyxy = pred
        self.xywh = [torch.cat((xyxy2xywh(p[:, :4]), p[:, 4:]), 1) for p in pred]
        self.xyxyn = [p / g for p, g in zip(self.xyxy, gains)]
        self.xywhn = [p / g for p, g in zip(self.xywh, gains)]

    def __len__(self):
        return self.n

    def __str__(self):
        lines = []
        for i, (im, p) in enumerate(zip(self.ims, self.pred)):
            counts = [(self.names[int(c)], int((p[:, 5] == c).sum())) for c in p[:, 5].unique()]
            found = ', '.join(f'{n} {name}{"s" * (n > 1)}' for name, n in counts) or '(no detections)'
            lines.append(f'image {i + 1}/{self.n}: {im.shape[0]}x{im.shape[1]} {found}')
        return '\n'.join(lines) + ('\nSpeed: %.1fms pre-process, %.1fms inference, %.1fms NMS per image at shape '
                                   % self.t) + str(self.s)

    def print(self):
        print(self)

    def render(self, labels=True):
        """The images with their boxes drawn as detect.py draws them: new RGB arrays (self.ims stay as they were)."""
        out = []
        for im, p in zip(self.ims, self.pred):
            bgr = np.ascontiguousarray(im[..., ::-1])
            for *xyxy, conf, cls in reversed(p.tolist()):
                label = f'{self.names[int(cls)]} {conf:.2f}' if labels else None
                draw_box(bgr, xyxy, label, PALETTE[int(cls) % len(PALETTE)], 3)
            out.append(bgr[..., ::-1])
        return out

    def save(self, labels=True, save_dir='runs/detect/exp', exist_ok=False):
        """Writes the rendered images to save_dir (exp2, exp3, ... if it exists, unless exist_ok); returns it."""
        save_dir = claim(save_dir, exist_ok)
        for im, f in zip(self.render(labels), self.files):
            save_image(im[..., ::-1], save_dir / f)  # (an OSError naming the file if it cannot)
        print(f'Saved {self.n} image{"s" * (self.n > 1)} to {save_dir}')
        return save_dir

    def crop(self, save=True, save_dir='runs/detect/exp', exist_ok=False):
        """Each detection's picture, as the original cuts it (the box 2% larger plus 10 pixels, clipped): a list of
        dicts box (xyxy), conf, cls, label, im (a BGR array); with save, also written to save_dir/crops/<class>/."""
        save_dir = claim(save_dir, exist_ok) if save else None
        crops = []
        for im, p, f in zip(self.ims, self.pred, self.files):
            for *xyxy, conf, cls in reversed(p.tolist()):
                xc, yc, w, h = xyxy2xywh(np.array(xyxy))
                w, h = w * 1.02 + 10, h * 1.02 + 10
                x1, y1, x2, y2 = (int(np.clip(v, 0, n)) for v, n in zip(
                    (xc - w / 2, yc - h / 2, xc + w / 2, yc + h / 2), (im.shape[1], im.shape[0]) * 2))
                name = self.names[int(cls)]
                crop = np.ascontiguousarray(im[y1:y2, x1:x2, ::-1])
                if save:
                    folder = save_dir / 'crops' / name
                    folder.mkdir(parents=True, exist_ok=True)
                    file, k = folder / f, 2
                    while file.exists():  # bus.jpg, bus2.jpg, ...: one file per detection
                        file, k = folder / f'{Path(f).stem}{k}.jpg', k + 1
                    save_image(crop, file)
                crops.append(dict(box=xyxy, conf=conf, cls=int(cls), label=f'{name} {conf:.2f}', im=crop))
        if save:
            print(f'Saved {len(crops)} crops to {save_dir / "crops"}')
        return crops


# ----------------------------------------------------------------------------------------------
# torch.hub's entry points
def custom(path='yolov5n.pt', autoshape=True, device=None, trust=False):
    """A checkpoint (ours, or an official yolov5*.pt) or an exported .torchscript / .onnx file. device: '' or None
    (CUDA if there is one), 'cpu', 0, 'cuda:1', a torch.device. autoshape=False: the bare model, on tensors.
    trust=True: a .torchscript file holds code, which loading it runs; it is loaded only so (or asked, on a
    terminal)."""
    model = load_any(path, select_device('' if device is None else str(device)), fuse=True, trust=trust)
    return AutoShape(model) if autoshape else model


def _official(scale, pretrained=True, channels=3, classes=80, autoshape=True, device=None):
    if channels != 3:
        raise ValueError('this YOLOv5 takes 3-channel images')
    if pretrained and classes == 80:
        return custom(f'yolov5{scale}.pt', autoshape, device)
    if pretrained:  # new classes: the official model, its weights wherever their shapes fit (all but the head)
        config, weights = read_checkpoint(f'yolov5{scale}.pt')
        model = YOLOv5(**dict(config, nc=classes, names=None))
        transfer(model, weights)
    else:
        model = YOLOv5(scale, classes)
    model = model.to(select_device('' if device is None else str(device))).eval()
    return AutoShape(model) if autoshape else model


def yolov5n(pretrained=True, channels=3, classes=80, autoshape=True, device=None):
    return _official('n', pretrained, channels, classes, autoshape, device)


def yolov5s(pretrained=True, channels=3, classes=80, autoshape=True, device=None):
    return _official('s', pretrained, channels, classes, autoshape, device)


def yolov5m(pretrained=True, channels=3, classes=80, autoshape=True, device=None):
    return _official('m', pretrained, channels, classes, autoshape, device)


def yolov5l(pretrained=True, channels=3, classes=80, autoshape=True, device=None):
    return _official('l', pretrained, channels, classes, autoshape, device)


def yolov5x(pretrained=True, channels=3, classes=80, autoshape=True, device=None):
    return _official('x', pretrained, channels, classes, autoshape, device)


def yolov5n6(pretrained=True, channels=3, classes=80, autoshape=True, device=None):  # P6: outputs to stride 64
    return _official('n6', pretrained, channels, classes, autoshape, device)


def yolov5s6(pretrained=True, channels=3, classes=80, autoshape=True, device=None):  # P6: outputs to stride 64
    return _official('s6', pretrained, channels, classes, autoshape, device)


def yolov5m6(pretrained=True, channels=3, classes=80, autoshape=True, device=None):  # P6: outputs to stride 64
    return _official('m6', pretrained, channels, classes, autoshape, device)


def yolov5l6(pretrained=True, channels=3, classes=80, autoshape=True, device=None):  # P6: outputs to stride 64
    return _official('l6', pretrained, channels, classes, autoshape, device)


def yolov5x6(pretrained=True, channels=3, classes=80, autoshape=True, device=None):  # P6: outputs to stride 64
    return _official('x6', pretrained, channels, classes, autoshape, device)
