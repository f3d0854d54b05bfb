"""
From image files to batches: letterbox, the augmentations and their hyperparameters, the dataset and
the loader. Labels are `class xc yc w h` normalized; while augmented, `class x1 y1 x2 y2` in pixels.
A sample's draws are seeded by (seed, epoch, index): the same with any workers, or after a resume.
"""
import math
import sys

import cv2
import numpy as np
import torch

from support.datasets import cache_to_disk, decode_image, find_images, fits_in_memory, load_labels
from support.datasets import loader_workers, preload, quads, rect_batches, weighted_draws
from support.datasets import xywh2xyxy, xyxy2xywh
from support.plots import show_batch

cv2.setNumThreads(0)  # OpenCV's own threads fight with the loader's worker processes
# YOLOv5's augmentations: hyp.scratch-low and its hardcoded albumentations. In train.py's HYP.
AUG = dict(hsv_h=0.015, hsv_s=0.7, hsv_v=0.4,                        # colour gains (fractions)
           degrees=0.0, translate=0.1, scale=0.5, shear=0.0, perspective=0.0,
           flipud=0.0, fliplr=0.5, mosaic=1.0, mixup=0.0,            # probabilities
           blur=0.01, median_blur=0.01, to_gray=0.01, clahe=0.01,    # (albumentations')
           crop=0.0, brightness_contrast=0.0, gamma=0.0, jpeg=0.0)
GREY = (114, 114, 114)  # the padding's colour


def letterbox(img, new_shape=640, color=GREY, auto=True, scaleup=True, stride=32):
    """Resized keeping the aspect ratio, padded to new_shape (h, w) (auto: to a stride multiple).
    Returns the image, the scale ratio and the (left, top) padding."""
    height, width = img.shape[:2]
    new_h, new_w = (new_shape, new_shape) if isinstance(new_shape, int) else new_shape
    ratio = min(new_h / height, new_w / width, math.inf if scaleup else 1.0)  # val never enlarges
    unpad_w = max(int(round(width * ratio)), 1)  # (a 10000x10 image keeps a pixel)
    unpad_h = max(int(round(height * ratio)), 1)
    pad_w = (new_w - unpad_w) / 2
    pad_h = (new_h - unpad_h) / 2
    if auto:  # pad only up to the stride
        pad_w = (new_w - unpad_w) % stride / 2
        pad_h = (new_h - unpad_h) % stride / 2
    if (width, height) != (unpad_w, unpad_h):
        img = cv2.resize(img, (unpad_w, unpad_h))
    top, bottom = int(round(pad_h - 0.1)), int(round(pad_h + 0.1))
    left, right = int(round(pad_w - 0.1)), int(round(pad_w + 0.1))
    img = cv2.copyMakeBorder(img, top, bottom, left, right, cv2.BORDER_CONSTANT, value=color)
    return img, ratio, (pad_w, pad_h)


def to_tensor(img):
    """A BGR image (h, w, 3) -> the model's RGB (3, h, w) uint8 tensor, channels-last in memory."""
    return torch.from_numpy(cv2.cvtColor(img, cv2.COLOR_BGR2RGB)).permute(2, 0, 1)


# ---------------------------------------- augmentations
def random_matrix(rng, hyp, shape, size):
    """A random affine (or perspective) matrix in hyp's ranges, (h, w) -> size (w, h); its scale."""
    centre = np.eye(3)  # the image's centre to the origin
    centre[:2, 2] = -shape[1] / 2, -shape[0] / 2
    perspective = np.eye(3)
    perspective[2, :2] = rng.uniform(-hyp['perspective'], hyp['perspective'], 2)
    scale = rng.uniform(1 - hyp['scale'], 1 + hyp['scale'])
    angle = rng.uniform(-hyp['degrees'], hyp['degrees'])
    rotation = np.eye(3)
    rotation[:2] = cv2.getRotationMatrix2D(center=(0, 0), angle=angle, scale=scale)
    shear = np.eye(3)
    shear[0, 1], shear[1, 0] = np.tan(np.radians(rng.uniform(-hyp['shear'], hyp['shear'], 2)))
    translation = np.eye(3)  # back to the output's centre, moved by up to translate
    translation[:2, 2] = rng.uniform(0.5 - hyp['translate'], 0.5 + hyp['translate'], 2) * size
    return translation @ shear @ rotation @ perspective @ centre, scale


def warp(img, labels, matrix, scale, size, origin=(0, 0)):
    """img and its xyxy labels warped by matrix to size (w, h); img may be a larger image's part
    from origin (x, y) on. A box stays if over 2 px wide and high, 10% of its area, aspect < 100."""
    if matrix[2, :2].any():  # a perspective (origin is 0 then)
        img = cv2.warpPerspective(img, matrix, size, borderValue=GREY)
    elif (matrix != np.eye(3)).any():
        # the inverse moved by whole pixels: bit for bit the warp of the whole image
        inverse = cv2.invertAffineTransform(matrix[:2]) - ((0, 0, origin[0]), (0, 0, origin[1]))
        flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
        img = cv2.warpAffine(img, inverse, size, flags=flags, borderValue=GREY)
    corners = labels[:, [1, 2, 3, 4, 1, 4, 3, 2]].reshape(-1, 2)  # (box corner, x y)
    xy = np.hstack((corners, np.ones((len(corners), 1)))) @ matrix.T
    xy = (xy[:, :2] / xy[:, 2:3]).reshape(-1, 4, 2)  # (box, corner, x y)
    new = np.concatenate((xy.min(1), xy.max(1)), 1).clip(0, (*size, *size))  # xyxy
    w_before, h_before = (labels[:, 3:] * scale - labels[:, 1:3] * scale).T
    w_after, h_after = (new[:, 2:] - new[:, :2]).T
    aspect = np.maximum(w_after / (h_after + 1e-16), h_after / (w_after + 1e-16))
    area_left = w_after * h_after / (w_before * h_before + 1e-16)
    kept = (w_after > 2) & (h_after > 2) & (area_left > 0.1) & (aspect < 100)
    labels = labels[kept]
    labels[:, 1:] = new[kept]
    return img, labels


def part_read(matrix, size, perspective):
    """The part (x0, y0, x1, y1) of a 2s x 2s canvas that its warp by matrix to s x s reads: where
    the output's corners come from, 1 more pixel for the interpolation (all for a perspective).
    The part's pixel (x, y) is the canvas's (x0 + x, y0 + y)."""
    if perspective:
        return 0, 0, 2 * size, 2 * size
    corners = [[0, size, 0, size], [0, 0, size, size], [1, 1, 1, 1]]  # x, y, 1 of each
    xy = cv2.invertAffineTransform(matrix[:2]) @ corners
    x0, y0 = (np.floor(xy.min(1)).astype(int) - 1).clip(0, 2 * size - 1)
    x1, y1 = (np.ceil(xy.max(1)).astype(int) + 2).clip(1, 2 * size)
    return x0, y0, x1, y1


def augment_hsv(img, rng, hgain=0.5, sgain=0.5, vgain=0.5):
    """Random gains on hue, saturation and value; BGR in, RGB out: the loader's one change of
    colour order."""
    if not (hgain or sgain or vgain):
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    gains = rng.uniform(-1, 1, 3) * (hgain, sgain, vgain) + 1
    values = np.arange(256.0)
    hue = (values * gains[0]) % 180  # OpenCV's hue runs 0-179
    saturation = np.clip(values * gains[1], 0, 255)
    value = np.clip(values * gains[2], 0, 255)
    planes = cv2.split(cv2.cvtColor(img, cv2.COLOR_BGR2HSV))  # a table a plane: faster
    tables = [table.astype(np.uint8) for table in (hue, saturation, value)]
    hsv = [cv2.LUT(plane, table) for plane, table in zip(planes, tables)]
    return cv2.cvtColor(cv2.merge(hsv), cv2.COLOR_HSV2RGB)


def random_resized_crop(img, labels, rng, size, scale=(0.8, 1.0), ratio=(0.9, 1.11)):
    """A crop of random area and aspect ratio, resized to size x size; boxes clipped to it."""
    height, width = img.shape[:2]
    for _ in range(10):
        area = height * width * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        crop_w = int(round(math.sqrt(area * aspect)))
        crop_h = int(round(math.sqrt(area / aspect)))
        if 0 < crop_w <= width and 0 < crop_h <= height:
            x0 = int(rng.integers(0, width - crop_w + 1))
            y0 = int(rng.integers(0, height - crop_h + 1))
            break
    else:  # fall back to a centre crop
        crop_w = crop_h = min(width, height)
        x0, y0 = (width - crop_w) // 2, (height - crop_h) // 2
    img = cv2.resize(img[y0:y0 + crop_h, x0:x0 + crop_w], (size, size))
    labels = labels.copy()
    labels[:, [1, 3]] = ((labels[:, [1, 3]] - x0) * size / crop_w).clip(0, size)
    labels[:, [2, 4]] = ((labels[:, [2, 4]] - y0) * size / crop_h).clip(0, size)
    return img, labels[(labels[:, 3] - labels[:, 1] >= 1) & (labels[:, 4] - labels[:, 2] >= 1)]


def photometric(img, rng, hyp):
    """The pixel-only part of YOLOv5's albumentations stack, with its ranges."""
    if rng.random() < hyp['blur']:
        kernel = int(rng.choice([3, 5, 7]))
        img = cv2.blur(img, (kernel, kernel))
    if rng.random() < hyp['median_blur']:
        img = cv2.medianBlur(img, int(rng.choice([3, 5, 7])))
    if rng.random() < hyp['to_gray']:
        img = cv2.cvtColor(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
    if rng.random() < hyp['clahe']:  # equalize the lightness channel only
        lab = cv2.cvtColor(img, cv2.COLOR_BGR2LAB)
        clahe = cv2.createCLAHE(clipLimit=rng.uniform(1, 4), tileGridSize=(8, 8))
        lab[:, :, 0] = clahe.apply(lab[:, :, 0])
        img = cv2.cvtColor(lab, cv2.COLOR_LAB2BGR)
    if rng.random() < hyp['brightness_contrast']:
        contrast = 1 + rng.uniform(-0.2, 0.2)
        brightness = rng.uniform(-0.2, 0.2) * 255
        table = np.clip(np.arange(256) * contrast + brightness, 0, 255)  # no abs(): 0 stays 0
        img = cv2.LUT(img, table.astype(np.uint8))
    if rng.random() < hyp['gamma']:
        table = 255 * (np.arange(256) / 255) ** rng.uniform(0.8, 1.2)
        img = cv2.LUT(img, table.clip(0, 255).astype(np.uint8))
    if rng.random() < hyp['jpeg']:
        quality = int(rng.integers(75, 101))
        _, encoded = cv2.imencode('.jpg', img, [cv2.IMWRITE_JPEG_QUALITY, quality])
        img = cv2.imdecode(encoded, cv2.IMREAD_COLOR)
    return img


def mixup(img, labels, img2, labels2, rng):
    ratio = rng.beta(32.0, 32.0)  # close to 0.5
    return (img * ratio + img2 * (1 - ratio)).astype(np.uint8), np.concatenate((labels, labels2))


# ---------------------------------------- dataset
class YOLODataset(torch.utils.data.Dataset):
    """dataset[i]: an image (3, h, w) uint8 RGB, its labels (n, 6) rows (0, class, xc, yc, w, h),
    its file, and (original (h, w), (ratio, pad)) (None after a mosaic)."""

    def __init__(self, source, img_size=640, batch_size=16, augment=False, hyp=None, rect=False,
                 stride=32, pad=0.0, cache=None, nc=80, seed=0, split='train', single_cls=False,
                 prefix=''):
        self.img_size = img_size
        self.augment = augment
        self.hyp = hyp
        self.rect = rect
        self.seed = seed
        self.batch_size = batch_size  # with rect, a loader batch shares a shape
        self.epoch = 0  # seeds dataset[i]'s draws (the loader passes (epoch, i))
        images = find_images(source, split)
        self.files, self.sizes, self.labels = load_labels(images, nc, prefix, single_cls)
        self.on_disk = cache == 'disk' and cache_to_disk(self.files, prefix)  # .npy files
        self.mosaic = augment and not rect
        self.warned = set()  # files that failed to decode
        if rect:  # by aspect ratio, a letterbox shape a batch: less padding
            batches = rect_batches(self.sizes, batch_size, img_size, stride, pad)
            order, self.batch_index, self.batch_shapes = batches
            self.files = [self.files[i] for i in order]
            self.labels = [self.labels[i] for i in order]
            self.sizes = self.sizes[order]
        # (w, h) of each image as loaded: its long side img_size
        scale = img_size / self.sizes.max(1, keepdims=True)
        self.shapes = np.ceil(self.sizes * scale).astype(int)
        self.bytes_decoded = 3 * self.shapes.prod(1).sum()  # all images decoded
        self.keep_decoded = cache == 'ram'
        self.decoded = [None] * len(self.files)
        if cache == 'ram':
            self.decoded = preload(self.load_image, len(self), self.bytes_decoded, img_size, prefix)

    def __len__(self):
        return len(self.files)

    def load_image(self, i):
        """Image i, its long side img_size, and its original (h, w); (None, None) if unreadable."""
        if self.decoded[i] is not None:
            return self.decoded[i]
        long_side = self.img_size if self.augment else None  # training: big JPEGs decoded smaller
        img, original_wh = decode_image(self.files[i], self.sizes[i], self.on_disk, long_side)
        if img is None:
            return None, None
        w0, h0 = original_wh
        ratio = self.img_size / max(w0, h0)
        size = math.ceil(w0 * ratio), math.ceil(h0 * ratio)
        if img.shape[1::-1] != size:
            # INTER_AREA to shrink without augmentation, as YOLOv5 (mAP changes a little)
            shrink = not self.augment and ratio <= 1
            interpolation = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
            img = cv2.resize(img, size, interpolation=interpolation)
        if self.keep_decoded:
            self.decoded[i] = img, (h0, w0)
        return img, (h0, w0)

    def pixel_labels(self, i, width, height, pad_w, pad_h):
        """Image i's labels: class, xyxy in pixels of it at size (w, h), at (pad_w, pad_h)."""
        labels = self.labels[i].copy()
        size = (width, height, width, height)
        labels[:, 1:] = xywh2xyxy(labels[:, 1:]) * size + (pad_w, pad_h, pad_w, pad_h)
        return labels

    def load_mosaic(self, index, rng):
        """Four images around a random centre of a 2s x 2s canvas, warped back to s x s. Only the
        part of the canvas that the warp reads is made: the same pixels, less work."""
        size = self.img_size
        xc, yc = (int(centre) for centre in rng.uniform(size // 2, 2 * size - size // 2, 2))
        indices = [index] + [int(i) for i in rng.integers(0, len(self), 3)]
        rng.shuffle(indices)
        matrix, scale = random_matrix(rng, self.hyp, (2 * size, 2 * size), (size, size))
        # only the part (x0, y0) - (x1, y1) of the canvas is made
        x0, y0, x1, y1 = part_read(matrix, size, self.hyp['perspective'])
        part = np.full((y1 - y0, x1 - x0, 3), 114, np.uint8)
        labels = []
        for position, i in enumerate(indices):  # top left, top right, bottom left, bottom right
            width, height = self.shapes[i]
            left_of_centre = position % 2 == 0
            above_centre = position < 2
            left = xc - width if left_of_centre else xc  # its top left corner, on the canvas
            top = yc - height if above_centre else yc
            if left < x1 and top < y1 and left + width > x0 and top + height > y0:  # in the part
                img, _, i = self.load_checked(i, rng)
                if img.shape[1::-1] != (width, height):  # a substitute, for one that failed
                    img = cv2.resize(img, (width, height))
                visible = img[max(y0 - top, 0):y1 - top, max(x0 - left, 0):x1 - left]
                top_in_part = top - y0
                left_in_part = left - x0
                part[max(top_in_part, 0):top_in_part + height,
                     max(left_in_part, 0):left_in_part + width] = visible
            labels.append(self.pixel_labels(i, width, height, left, top))
        labels = np.concatenate(labels)
        labels[:, 1:] = labels[:, 1:].clip(0, 2 * size)
        return warp(part, labels, matrix, scale, (size, size), (x0, y0))

    def load_checked(self, i, rng):
        """load_image; a file that fails to decode is reported once, replaced."""
        for _ in range(100):
            img, original_hw = self.load_image(i)
            if img is not None:
                return img, original_hw, i
            if self.files[i] not in self.warned:
                self.warned.add(self.files[i])
                print(f'WARNING: {self.files[i]}: cannot decode image, skipped', file=sys.stderr)
            i = int(rng.integers(0, len(self)))
        raise RuntimeError('no readable image found')

    def __getitem__(self, index):
        # (epoch, index) from EpochSampler
        epoch, index = index if isinstance(index, tuple) else (self.epoch, index)
        rng = np.random.default_rng([self.seed, epoch, index])
        hyp = self.hyp
        to_original = None
        if self.mosaic and rng.random() < hyp['mosaic']:
            img, labels = self.load_mosaic(index, rng)
            if rng.random() < hyp['mixup']:
                other = self.load_mosaic(int(rng.integers(0, len(self))), rng)
                img, labels = mixup(img, labels, *other, rng)
        else:
            # the batch's letterbox shape, taken before a substitute may change the index
            shape = self.batch_shapes[self.batch_index[index]] if self.rect else self.img_size
            img, (h0, w0), index = self.load_checked(index, rng)
            height, width = img.shape[:2]
            img, ratio, pad = letterbox(img, shape, auto=False, scaleup=self.augment)
            # for scale_boxes: load_image had resized it, by height / h0
            to_original = (h0, w0), (height / h0 * ratio, pad)
            labels = self.pixel_labels(index, ratio * width, ratio * height, *pad)
            if self.augment:
                size = img.shape[1::-1]
                img, labels = warp(img, labels, *random_matrix(rng, hyp, img.shape, size), size)
        if self.augment:
            if rng.random() < hyp['crop']:
                img, labels = random_resized_crop(img, labels, rng, self.img_size)
            img = photometric(img, rng, hyp)
        # the one change of colour order: BGR (OpenCV's) before, RGB after
        gains = [hyp[name] if self.augment else 0 for name in ('hsv_h', 'hsv_s', 'hsv_v')]
        img = augment_hsv(img, rng, *gains)
        height, width = img.shape[:2]
        size = (width, height, width, height)
        labels = labels.astype(np.float32)
        labels[:, 1:] = xyxy2xywh(labels[:, 1:].clip(0, size)) / size
        labels = labels[(labels[:, 3] > 1e-3) & (labels[:, 4] > 1e-3)]
        # from here the image is RGB and its labels xywh, normalized
        if self.augment:
            if rng.random() < hyp['flipud']:
                img = cv2.flip(img, 0)
                labels[:, 2] = 1 - labels[:, 2]
            if rng.random() < hyp['fliplr']:
                img = cv2.flip(img, 1)
                labels[:, 1] = 1 - labels[:, 1]
        labels = np.pad(labels, ((0, 0), (1, 0)))  # column 0: its image in the batch (collate's)
        image = torch.from_numpy(img).permute(2, 0, 1)
        return image, torch.from_numpy(labels), self.files[index], to_original


def collate(batch):
    imgs, labels, paths, to_original = zip(*batch)
    for i, image_labels in enumerate(labels):
        image_labels[:, 0] = i  # its image in the batch
    # channels-last, copied by numpy: torch's threads spin, 20x slower on a busy machine
    imgs = np.stack([img.permute(1, 2, 0).numpy() for img in imgs])
    return torch.from_numpy(imgs).permute(0, 3, 1, 2), torch.cat(labels), paths, to_original


def collate_quads(batch):  # --quad
    return quads(collate(batch))


class EpochSampler(torch.utils.data.distributed.DistributedSampler):
    """A DistributedSampler whose indices carry their epoch (it seeds a sample's draws) to the
    workers. weights (--image-weights): len(dataset) draws by them."""
    weights = None

    def __iter__(self):
        indices = super().__iter__()
        if self.weights is not None:
            indices = weighted_draws(self.weights, self.seed, self.epoch)
        return ((self.epoch, i) for i in indices)


def create_dataloader(dataset, batch_size, workers=None, shuffle=False, rank=0, world_size=1,
                      cpu=False, quad=False):
    """workers=None: as many as the machine spares; cpu: the model runs there; quad: batches of
    batch_size / 4 samples at twice the size."""
    workers = loader_workers(workers, batch_size, world_size, cpu)
    sampler = EpochSampler(dataset, world_size, rank, shuffle=shuffle, seed=dataset.seed)
    # a small dataset's images are kept decoded: a fine-tune would decode each 4x an epoch
    dataset.keep_decoded |= fits_in_memory(dataset.bytes_decoded, max(workers, 1) * world_size)
    return torch.utils.data.DataLoader(dataset, batch_size, sampler=sampler, num_workers=workers,
                                       collate_fn=collate_quads if quad else collate,
                                       pin_memory=torch.cuda.is_available(),
                                       persistent_workers=workers > 0)


def set_epoch(loader, epoch):
    loader.sampler.set_epoch(epoch)  # the sampler hands (epoch, index) to the dataset


if __name__ == '__main__':  # python data.py DATASET: see what training sees
    show_batch(YOLODataset, collate, AUG)
