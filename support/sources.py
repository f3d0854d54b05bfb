"""
detect.py's inputs and outputs: images, videos, folders, globs, webcams, streams and .streams lists, read
frame by frame; each frame's label file, crops and boxes drawn; Ctrl-C that ends a run after its frame.
"""
import csv
import glob
import io
import os
import signal
import sys
import threading
import urllib.parse
from pathlib import Path

import cv2
import torch

from support.datasets import IMAGE_EXTS, label_text, xywh2xyxy, xyxy2xywh
from support.files import WriteError, save_image, save_text
from support.plots import PALETTE, draw_box


def frame_name(video, number, sources, frame_index, frame_count):
    """'image 2/5' or 'video 2/5 (frame 31/120)', as the original's lines begin (frame count 0: unknown)."""
    if not video:
        return f'image {number}/{sources}'
    of = f'/{frame_count}' if frame_count else ''
    return f'video {number}/{sources} (frame {frame_index + 1}{of})'


def describe(det, names):
    """'4 persons, 1 bus, ' for an image's detections (n, 6), as the original prints them."""
    counts = [(names[int(cls)], int((det[:, 5] == cls).sum())) for cls in det[:, 5].unique()]
    text = ''.join(f'{count} {name}{"s" if count > 1 else ""}, ' for name, count in counts)
    return text or '(no detections), '


def save_results(opt, names, save_dir, stem, frame_number, frame, det):
    """detect.py's outputs of a frame: its crops (--save-crop) and label file (--save-txt, numbered for a video frame),
    then its boxes drawn on it (unless --nosave). Returns the number of label files written; raises OSError if
    something cannot be written."""
    for *xyxy, conf, cls in reversed(det.tolist()) if opt.save_crop else []:  # from the frame before any drawing
        save_crop(frame, xyxy, save_dir / 'crops' / names[int(cls)] / f'{stem}.jpg')
    for *xyxy, conf, cls in reversed(det.tolist()) if not opt.nosave else []:
        label = None if opt.hide_labels else names[int(cls)] + ('' if opt.hide_conf else f' {conf:.2f}')
        draw_box(frame, xyxy, label, PALETTE[int(cls) % len(PALETTE)], opt.line_thickness)
    if not (opt.save_txt and len(det)):
        return 0
    name = f'{stem}_{frame_number}' if frame_number else stem
    save_text(label_text(det.flip(0), frame.shape, opt.save_conf), save_dir / 'labels' / f'{name}.txt')
    return 1


def csv_rows_of(path, det, names):
    """--save-csv's rows of a frame, as the original's predictions.csv: image name, class name, confidence."""
    return [(Path(path).name, names[int(cls)], f'{conf:.2f}') for *_, conf, cls in reversed(det.tolist())]


def save_csv(rows, path):
    """predictions.csv, with its header; a name holding a comma is quoted."""
    text = io.StringIO()
    csv.writer(text, lineterminator='\n').writerows([('Image Name', 'Prediction', 'Confidence'), *rows])
    save_text(text.getvalue(), path)


VIDEO_EXTS = {'.asf', '.avi', '.gif', '.m4v', '.mkv', '.mov', '.mp4', '.mpeg', '.mpg', '.ts', '.wmv'}
STREAMS = ('rtsp://', 'rtmp://', 'http://', 'https://')


def is_stream(source):
    """A webcam index (0, 1, ...) or a URL: OpenCV reads it frame by frame as it comes."""
    return source.isdecimal() or source.lower().startswith(STREAMS)


def expand_sources(sources):
    """Yields (source, error or None) for each image or video named by files, folders or globs, each webcam index and
    URL, and each line of a .streams file. An existing path is itself, even one with glob characters (photo[1].jpg)."""
    media = IMAGE_EXTS | VIDEO_EXTS
    for s in sources:
        if is_stream(s):
            yield s, None
            continue
        if s.endswith('.streams') and os.path.isfile(s):  # one source a line (a name may hold spaces)
            try:
                lines = Path(s).read_text(encoding='utf-8-sig').splitlines()
            except UnicodeDecodeError as e:
                yield s, f'not UTF-8 text ({e.reason} at byte {e.start}): not a list of sources'
                continue
            yield from expand_sources([line.strip() for line in lines if line.strip()])
            continue
        if os.path.isdir(s):
            files = sorted(os.path.join(s, f) for f in os.listdir(s) if Path(f).suffix.lower() in media)
        elif os.path.exists(s) or not any(c in s for c in '*?['):
            files = [s]
        else:
            files = sorted(glob.glob(s, recursive=True))
        if not files:
            yield s, 'no such file or directory'
        for f in files:
            if not os.path.isfile(f):
                yield f, 'no such file'
            elif Path(f).suffix.lower() not in media:
                yield f, f'not an image or video (supported: {" ".join(sorted(media))})'
            else:
                yield f, None


def read_frames(source, vid_stride=1):
    """Yields (frame BGR, index, frame count or 0 if unknown, fps): one frame for an image, none for a file that does
    not decode or a stream that does not open. Of a video or stream every vid_stride-th frame, as the original reads
    them (vid_stride - 1, 2 * vid_stride - 1, ...). A stream ends when it closes."""
    if Path(source).suffix.lower() in IMAGE_EXTS and not is_stream(source):
        img = cv2.imread(source)
        if img is not None:
            yield img, 0, 1, 0
        return
    cap = cv2.VideoCapture(int(source) if source.isdecimal() else source)
    count = max(int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), 0) // vid_stride
    fps = cap.get(cv2.CAP_PROP_FPS)
    if is_stream(source):  # some streams report rates like 90000 (their clock): the original takes them modulo 100
        fps %= 100
    n = 0
    try:
        while cap.grab():
            n += 1
            if n % vid_stride == 0:
                ok, frame = cap.retrieve()
                if not ok:
                    break
                yield frame, n // vid_stride - 1, count, fps or 30
    finally:
        cap.release()


def output_stem(source, taken):
    """The name of a source's outputs in a run folder: its stem (of the URL's path for a stream, 'stream' if none), or
    with 2, 3, ... added if an earlier source took it (as run folders and crops are named): same-named inputs from
    different folders each keep their image and labels. taken: the stems so far, this one added."""
    stem = Path(urllib.parse.urlsplit(source).path if is_stream(source) else source).stem or 'stream'
    new, n = stem, 2
    while new in taken:
        new, n = f'{stem}{n}', n + 1
    taken.add(new)
    return new


def save_crop(img, xyxy, path):
    """The box's region of img, 2% and 10 pixels larger (as the original's crops), to path or, if taken, to path
    with 2, 3, ... added to its stem. Raises OSError if it cannot be written."""
    b = xyxy2xywh(torch.tensor(xyxy, dtype=torch.float32).view(1, 4))
    b[:, 2:] = b[:, 2:] * 1.02 + 10
    x1, y1, x2, y2 = xywh2xyxy(b).long()[0].tolist()
    x1, x2 = (min(max(x, 0), img.shape[1]) for x in (x1, x2))  # inside the image
    y1, y2 = (min(max(y, 0), img.shape[0]) for y in (y1, y2))
    crop = img[y1:y2, x1:x2]
    path.parent.mkdir(parents=True, exist_ok=True)
    new, n = path, 2
    while new.exists():
        new, n = path.with_stem(f'{path.stem}{n}'), n + 1
    return save_image(crop, new)


class VideoFile:
    """An annotated video, written frame by frame to a temporary file that close() renames into place (after Ctrl-C
    too): path never holds half a video."""
    def __init__(self, path):
        self.path = Path(path)
        self.tmp = self.path.with_name(f'{self.path.stem}.{os.getpid()}.tmp.mp4')  # .mp4: OpenCV's container
        self.writer = None

    def write(self, frame, fps):
        if self.writer is None:  # the size and rate of the first frame
            self.writer = cv2.VideoWriter(str(self.tmp), cv2.VideoWriter_fourcc(*'mp4v'), fps, frame.shape[1::-1])
            if not self.writer.isOpened():
                raise WriteError(self.path, 'OpenCV cannot write a video there')
        self.writer.write(frame)

    def close(self):
        if self.writer is not None and self.writer.isOpened():
            self.writer.release()
            try:
                os.replace(self.tmp, self.path)
            except OSError as e:
                self.tmp.unlink(missing_ok=True)
                print(f'ERROR: {self.path}: cannot save ({e.strerror})', file=sys.stderr)


def stop_on_ctrl_c():
    """An event that Ctrl-C sets instead of raising KeyboardInterrupt, so that a loop can end after its current step
    (a video written so far is then finalized). A second Ctrl-C stops the program at once."""
    stop = threading.Event()

    def handler(*_):
        stop.set()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGINT, handler)
    return stop
