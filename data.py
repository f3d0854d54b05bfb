"""
From image files to training batches: the augmentations (numpy + OpenCV, no albumentations) and their
hyperparameters, letterbox, the dataset and the loader. Which files and labels make a dataset, and their checks,
are plumbing.py's.

Labels are YOLO rows `class xc yc w h`, normalized; while an image is augmented here they are `class x1 y1 x2 y2` in
pixels, normalized again at the end. Every random draw of a sample comes from a generator seeded by (seed, epoch,
index): a batch is the same whatever the number of workers, and a resumed run sees the data of an uninterrupted one.
"""
import math
import os
import sys
from multiprocessing.pool import ThreadPool

import cv2
import numpy as np
import torch

from plumbing import (available_memory, check_cache_ram, find_images, load_labels, rect_batches, show_batch,
                      xywh2xyxy, xyxy2xywh)

cv2.setNumThreads(0)  # OpenCV's own threads fight with the loader's worker processes
# YOLOv5's augmentations: hyp.scratch-low and its hardcoded albumentations. In train.py's HYP, --hyp overrides them.
AUG = dict(hsv_h=0.015, hsv_s=0.7, hsv_v=0.4,                                  # colour gains (fractions)
           degrees=0.0, translate=0.1, scale=0.5, shear=0.0, perspective=0.0,  # geometry
           flipud=0.0, fliplr=0.5, mosaic=1.0, mixup=0.0,                      # probabilities
           blur=0.01, median_blur=0.01, to_gray=0.01, clahe=0.01,              # probabilities (YOLOv5's albumentations)
           crop=0.0, brightness_contrast=0.0, gamma=0.0, jpeg=0.0)


def letterbox(img, new_shape=640, color=(114, 114, 114), auto=True, scaleup=True, stride=32):
    """Resize keeping the aspect ratio, then pad to new_shape (h, w) (with auto, only to the next multiple of stride).
    Returns the image, the scale ratio and the (left, top) padding (floats)."""
    h, w = img.shape[:2]
    new_h, new_w = (new_shape, new_shape) if isinstance(new_shape, int) else new_shape
    r = min(new_h / h, new_w / w, math.inf if scaleup else 1.0)  # scaleup=False (val): never enlarges
    unpad_w, unpad_h = int(round(w * r)), int(round(h * r))
    dw, dh = new_w - unpad_w, new_h - unpad_h
    dw, dh = (dw % stride / 2, dh % stride / 2) if auto else (dw / 2, dh / 2)  # auto: pad only up to the stride
    if (w, h) != (unpad_w, unpad_h):
        img = cv2.resize(img, (unpad_w, unpad_h))
    top, bottom = int(round(dh - 0.1)), int(round(dh + 0.1))
    left, right = int(round(dw - 0.1)), int(round(dw + 0.1))
    img = cv2.copyMakeBorder(img, top, bottom, left, right, cv2.BORDER_CONSTANT, value=color)
    return img, r, (dw, dh)


def to_tensor(img):
    """A BGR image (h, w, 3) -> the model's RGB (3, h, w) uint8 tensor, channels-last: convolutions' fastest layout."""
    return torch.from_numpy(cv2.cvtColor(img, cv2.COLOR_BGR2RGB)).permute(2, 0, 1)


# ---------------------------------------------------------------------------------------------- augmentations
def random_matrix(rng, hyp, shape, size):
    """A random affine (or perspective) 3x3 matrix in hyp's ranges, shape (h, w) -> size (w, h), and its scale."""
    C, P, R, S, T = (np.eye(3) for _ in range(5))  # centre, perspective, rotation and scale, shear, translation
    C[0, 2], C[1, 2] = -shape[1] / 2, -shape[0] / 2
    P[2, 0], P[2, 1] = rng.uniform(-hyp['perspective'], hyp['perspective'], 2)
    s = rng.uniform(1 - hyp['scale'], 1 + hyp['scale'])
    R[:2] = cv2.getRotationMatrix2D(center=(0, 0), angle=rng.uniform(-hyp['degrees'], hyp['degrees']), scale=s)
    S[0, 1], S[1, 0] = np.tan(np.radians(rng.uniform(-hyp['shear'], hyp['shear'], 2)))
    T[0, 2], T[1, 2] = rng.uniform(0.5 - hyp['translate'], 0.5 + hyp['translate'], 2) * size  # re-centred
    return T @ S @ R @ P @ C, s


def warp(img, labels, M, s, size, origin=(0, 0)):
    """img (from origin (x, y) on, of an image M maps to size (w, h)) and its pixel xyxy labels warped; boxes kept:
    > 2 px wide and high, > 10% of their area left (s: M's scale), aspect < 100."""
    if M[2, :2].any():  # (only with origin 0)
        img = cv2.warpPerspective(img, M, size, borderValue=(114, 114, 114))
    elif (M != np.eye(3)).any():  # M's inverse moved by whole pixels: bit for bit the whole image's warp
        iM = cv2.invertAffineTransform(M[:2]) - ((0, 0, origin[0]), (0, 0, origin[1]))
        img = cv2.warpAffine(img, iM, size, flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderValue=(114, 114, 114))
    xy = np.hstack((labels[:, [1, 2, 3, 4, 1, 4, 3, 2]].reshape(-1, 2), np.ones((len(labels) * 4, 1)))) @ M.T
    xy = (xy[:, :2] / xy[:, 2:3]).reshape(-1, 4, 2)  # (box, corner, x y)
    new = np.concatenate((xy.min(1), xy.max(1)), 1).clip(0, size * 2)
    (w1, h1), (w2, h2) = (labels[:, 3:] * s - labels[:, 1:3] * s).T, (new[:, 2:] - new[:, :2]).T  # before, after
    aspect = np.maximum(w2 / (h2 + 1e-16), h2 / (w2 + 1e-16))
    keep = (w2 > 2) & (h2 > 2) & (w2 * h2 / (w1 * h1 + 1e-16) > 0.1) & (aspect < 100)
    labels = labels[keep]
    labels[:, 1:] = new[keep]
    return img, labels


def augment_hsv(img, rng, hgain=0.5, sgain=0.5, vgain=0.5):
    """Random gains on hue, saturation and value; BGR in, RGB (the model's order) out: the loader's one change of
    colour order (all it does with gains of 0)."""
    if not (hgain or sgain or vgain):
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    r = rng.uniform(-1, 1, 3) * (hgain, sgain, vgain) + 1
    x = np.arange(256.0)
    luts = (x * r[0]) % 180, np.clip(x * r[1], 0, 255), np.clip(x * r[2], 0, 255)  # OpenCV's hue: 0-179
    hsv = [cv2.LUT(c, t.astype(np.uint8)) for c, t in zip(cv2.split(cv2.cvtColor(img, cv2.COLOR_BGR2HSV)), luts)]
    return cv2.cvtColor(cv2.merge(hsv), cv2.COLOR_HSV2RGB)  # (planes: faster than a 3-channel LUT)


def random_resized_crop(img, labels, rng, size, scale=(0.8, 1.0), ratio=(0.9, 1.11)):
    """A crop of random area and aspect ratio, resized to size x size; boxes clipped to it."""
    h, w = img.shape[:2]
    for _ in range(10):
        area = h * w * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        cw, ch = int(round(math.sqrt(area * aspect))), int(round(math.sqrt(area / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            break
    else:  # fall back to a centre crop
        cw = ch = min(w, h)
        x0, y0 = (w - cw) // 2, (h - ch) // 2
    img = cv2.resize(img[y0:y0 + ch, x0:x0 + cw], (size, size))
    labels = labels.copy()
    labels[:, [1, 3]] = ((labels[:, [1, 3]] - x0) * size / cw).clip(0, size)
    labels[:, [2, 4]] = ((labels[:, [2, 4]] - y0) * size / ch).clip(0, size)
    return img, labels[(labels[:, 3] - labels[:, 1] >= 1) & (labels[:, 4] - labels[:, 2] >= 1)]


def photometric(img, rng, hyp):
    """The pixel-only part of the albumentations stack YOLOv5 applies, with its parameter ranges."""
    if rng.random() < hyp['blur']:
        k = int(rng.choice([3, 5, 7]))
        img = cv2.blur(img, (k, k))
    if rng.random() < hyp['median_blur']:
        img = cv2.medianBlur(img, int(rng.choice([3, 5, 7])))
    if rng.random() < hyp['to_gray']:
        img = cv2.cvtColor(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
    if rng.random() < hyp['clahe']:  # equalize the lightness channel only
        lab = cv2.cvtColor(img, cv2.COLOR_BGR2LAB)
        lab[:, :, 0] = cv2.createCLAHE(clipLimit=rng.uniform(1, 4), tileGridSize=(8, 8)).apply(lab[:, :, 0])
        img = cv2.cvtColor(lab, cv2.COLOR_LAB2BGR)
    if rng.random() < hyp['brightness_contrast']:
        alpha, beta = 1 + rng.uniform(-0.2, 0.2), rng.uniform(-0.2, 0.2) * 255
        img = cv2.LUT(img, np.clip(np.arange(256) * alpha + beta, 0, 255).astype(np.uint8))  # no abs(): 0 stays 0
    if rng.random() < hyp['gamma']:
        img = cv2.LUT(img, (255 * (np.arange(256) / 255) ** rng.uniform(0.8, 1.2)).clip(0, 255).astype(np.uint8))
    if rng.random() < hyp['jpeg']:
        ok, buf = cv2.imencode('.jpg', img, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(75, 101))])
        img = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    return img


def mixup(img, labels, img2, labels2, rng):
    r = rng.beta(32.0, 32.0)  # mixing ratio, close to 0.5
    return (img * r + img2 * (1 - r)).astype(np.uint8), np.concatenate((labels, labels2))


# ---------------------------------------------------------------------------------------------- dataset
class YOLODataset(torch.utils.data.Dataset):
    def __init__(self, source, img_size=640, batch_size=16, augment=False, hyp=None, rect=False, stride=32,
                 pad=0.0, cache=None, nc=80, seed=0, split='train', single_cls=False, prefix=''):
        self.img_size = img_size
        self.augment = augment
        self.hyp = hyp
        self.rect = rect
        self.seed = seed
        self.batch_size = batch_size  # with rect, a loader batch shares a shape
        self.epoch = 0  # ds[i]'s, in its random seed (the loader passes (epoch, i))
        self.files, self.sizes, self.labels = load_labels(find_images(source, split), nc, prefix, single_cls)
        self.mosaic = augment and not rect
        self.warned = set()  # files that stopped decoding
        if rect:  # sorted by aspect ratio, a letterbox shape per batch: less padding, YOLOv5's val results
            order, self.batch_index, self.batch_shapes = rect_batches(self.sizes, batch_size, img_size, stride, pad)
            self.files = [self.files[i] for i in order]
            self.labels = [self.labels[i] for i in order]
            self.sizes = self.sizes[order]
        self.shapes = np.ceil(self.sizes * (img_size / self.sizes.max(1, keepdims=True))).astype(int)  # as loaded
        self.need = 3 * self.shapes.prod(1).sum()  # bytes, all images decoded
        self.keep = cache == 'ram'
        self.ram = [None] * len(self.files)
        if cache == 'ram':
            check_cache_ram(self.need, available_memory(), len(self.files), img_size)
            with ThreadPool(min(8, os.cpu_count() * 2)) as pool:
                self.ram = pool.map(self.load_image, range(len(self.files)))
            mb = sum(x[0].nbytes for x in self.ram if x[0] is not None) / 2 ** 20
            print(f'{prefix}Cached {len(self.files)} images in RAM ({mb:.0f} MB)')

    def __len__(self):
        return len(self.files)

    def load_image(self, i):
        """Image i with its long side img_size, and its original (h, w); (None, None) if unreadable. Training decodes
        a JPEG it shrinks 2x or more at reduced size (2x faster; ~1 grey level off a full decode)."""
        if self.ram[i] is not None:
            return self.ram[i]
        f = max(k for k in (1, 2, 4, 8) if k * self.img_size <= self.sizes[i].max() or k == 1) if self.augment else 1
        img = cv2.imread(self.files[i], getattr(cv2, f'IMREAD_REDUCED_COLOR_{f}') if f > 1 else cv2.IMREAD_COLOR)
        if img is None:
            return None, None
        w0, h0 = self.sizes[i] if f > 1 else img.shape[1::-1]
        r = self.img_size / max(w0, h0)
        size = math.ceil(w0 * r), math.ceil(h0 * r)
        if img.shape[1::-1] != size:  # INTER_AREA to shrink without augmentation, as YOLOv5 (it changes mAP a little)
            img = cv2.resize(img, size, interpolation=cv2.INTER_LINEAR if self.augment or r > 1 else cv2.INTER_AREA)
        if self.keep:
            self.ram[i] = img, (h0, w0)
        return img, (h0, w0)

    def pixel_labels(self, i, w, h, padw, padh):
        """Image i's labels: class, pixel xyxy in the image of size (w, h) placed at (padw, padh)."""
        lb = self.labels[i].copy()
        lb[:, 1:] = xywh2xyxy(lb[:, 1:]) * (w, h, w, h) + (padw, padh, padw, padh)
        return lb

    def load_mosaic(self, index, rng):
        """Four images around a random centre of a 2s x 2s canvas, warped back to s x s. Only the part the warp reads
        is made, and only the images in it decoded."""
        s = self.img_size
        xc, yc = (int(v) for v in rng.uniform(s // 2, 2 * s - s // 2, 2))
        indices = [index] + [int(i) for i in rng.integers(0, len(self), 3)]
        rng.shuffle(indices)
        M, scale = random_matrix(rng, self.hyp, (2 * s, 2 * s), (s, s))
        x0, y0, x1, y1 = 0, 0, 2 * s, 2 * s
        if not self.hyp['perspective']:  # the box where the output's corners come from, + 1 px (else all)
            xy = cv2.invertAffineTransform(M[:2]) @ [[0, s, 0, s], [0, 0, s, s], [1, 1, 1, 1]]
            x0, y0 = (np.floor(xy.min(1)).astype(int) - 1).clip(0, 2 * s - 1)
            x1, y1 = (np.ceil(xy.max(1)).astype(int) + 2).clip(1, 2 * s)
        canvas, labels = np.full((y1 - y0, x1 - x0, 3), 114, np.uint8), []
        for k, i in enumerate(indices):  # image k: left of the centre for even k, above it for k < 2
            w, h = self.shapes[i]
            x, y = (xc - w if k % 2 == 0 else xc) - x0, (yc - h if k < 2 else yc) - y0  # its top left, in the part
            if x < x1 - x0 and y < y1 - y0 and x + w > 0 and y + h > 0:
                img, _, i = self.load_checked(i, rng)
                img = img if img.shape[1::-1] == (w, h) else cv2.resize(img, (w, h))  # (a substitute)
                canvas[max(y, 0):y + h, max(x, 0):x + w] = img[max(-y, 0):y1 - y0 - y, max(-x, 0):x1 - x0 - x]
            labels.append(self.pixel_labels(i, w, h, x + x0, y + y0))
        labels = np.concatenate(labels)
        labels[:, 1:] = labels[:, 1:].clip(0, 2 * s)
        return warp(canvas, labels, M, scale, (s, s), (x0, y0))

    def load_checked(self, i, rng):
        """load_image, but a file that fails to decode is reported once and replaced: image, original (h, w), index."""
        for _ in range(100):
            img, hw0 = self.load_image(i)
            if img is not None:
                return img, hw0, i
            if self.files[i] not in self.warned:
                self.warned.add(self.files[i])
                print(f'WARNING: {self.files[i]}: cannot decode image, skipped', file=sys.stderr)
            i = int(rng.integers(0, len(self)))
        raise RuntimeError('no readable image found')

    def __getitem__(self, index):
        epoch, index = index if isinstance(index, tuple) else (self.epoch, index)  # (epoch, index) from EpochSampler
        rng = np.random.default_rng([self.seed, epoch, index])
        hyp, to_orig = self.hyp, None
        if self.mosaic and rng.random() < hyp['mosaic']:
            img, labels = self.load_mosaic(index, rng)
            if rng.random() < hyp['mixup']:
                img, labels = mixup(img, labels, *self.load_mosaic(int(rng.integers(0, len(self))), rng), rng)
        else:
            shape = self.batch_shapes[self.batch_index[index]] if self.rect else self.img_size  # before a substitute
            img, (h0, w0), index = self.load_checked(index, rng)
            h, w = img.shape[:2]
            img, ratio, pad = letterbox(img, shape, auto=False, scaleup=self.augment)
            to_orig = (h0, w0), (h / h0 * ratio, pad)  # for scale_boxes, back to the original
            labels = self.pixel_labels(index, ratio * w, ratio * h, *pad)
            if self.augment:
                img, labels = warp(img, labels, *random_matrix(rng, hyp, img.shape, img.shape[1::-1]), img.shape[1::-1])
        if self.augment:
            if rng.random() < hyp['crop']:
                img, labels = random_resized_crop(img, labels, rng, self.img_size)
            img = photometric(img, rng, hyp)
        # the one change of colour order: BGR (OpenCV's) before, RGB after
        img = augment_hsv(img, rng, *[hyp[k] if self.augment else 0 for k in ('hsv_h', 'hsv_s', 'hsv_v')])
        h, w = img.shape[:2]
        labels = labels.astype(np.float32)
        labels[:, 1:] = xyxy2xywh(labels[:, 1:].clip(0, (w, h, w, h))) / (w, h, w, h)
        labels = labels[(labels[:, 3] > 1e-3) & (labels[:, 4] > 1e-3)]
        if self.augment:
            if rng.random() < hyp['flipud']:
                img, labels[:, 2] = cv2.flip(img, 0), 1 - labels[:, 2]
            if rng.random() < hyp['fliplr']:
                img, labels[:, 1] = cv2.flip(img, 1), 1 - labels[:, 1]
        labels = np.pad(labels, ((0, 0), (1, 0)))  # column 0: its image in the batch, set by collate
        return torch.from_numpy(img).permute(2, 0, 1), torch.from_numpy(labels), self.files[index], to_orig


def collate(batch):
    imgs, labels, paths, to_orig = zip(*batch)
    for i, lb in enumerate(labels):
        lb[:, 0] = i  # its image in the batch
    # channels-last, copied by numpy: torch's spins on its threads, 20x slower on a busy 2-core machine
    imgs = torch.from_numpy(np.stack([im.permute(1, 2, 0).numpy() for im in imgs])).permute(0, 3, 1, 2)
    return imgs, torch.cat(labels), paths, to_orig


class EpochSampler(torch.utils.data.distributed.DistributedSampler):
    """A DistributedSampler (also for one process: set_epoch reshuffles) whose indices carry their epoch: (epoch,
    index) seeds a sample's random draws, and reaches loader workers that live for the run."""
    def __iter__(self):
        return ((self.epoch, i) for i in super().__iter__())


def create_dataloader(dataset, batch_size, workers=None, shuffle=False, rank=0, world_size=1, cpu=False):
    """workers=None: up to 8 beside a GPU; beside a CPU that computes (cpu=True), the cores its threads leave: none on
    2 cores (measured: there they slow the training steps more than they help)."""
    if workers is None:
        workers = max(os.cpu_count() // world_size - torch.get_num_threads(), 0) if cpu else 8
    sampler = EpochSampler(dataset, world_size, rank, shuffle=shuffle, seed=dataset.seed, drop_last=False)
    workers = min(os.cpu_count() // world_size, batch_size if batch_size > 1 else 0, workers)  # as the original
    # kept once decoded when all copies (one a worker) need under a tenth of the free memory: a fine-tune on a small
    # dataset would otherwise decode each image 4x an epoch
    dataset.keep |= dataset.need * max(workers, 1) * world_size < 0.1 * (available_memory() or 0)
    return torch.utils.data.DataLoader(dataset, batch_size, sampler=sampler, num_workers=workers, collate_fn=collate,
                                       pin_memory=torch.cuda.is_available(), persistent_workers=workers > 0)


def set_epoch(loader, epoch):
    loader.sampler.set_epoch(epoch)  # the sampler hands (epoch, index) to the dataset, in any worker


if __name__ == '__main__':  # python data.py DATASET [--img 640] [--names FILE]: see what training sees
    show_batch(YOLODataset, collate, AUG)
