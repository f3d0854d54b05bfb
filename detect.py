"""
Run a YOLOv5 model on images, folders, globs or videos:  python detect.py img.jpg [more ...]
Annotated results go to runs/detect/exp (then exp2, exp3, ...), YOLO labels with --save-txt.
"""
import argparse
import functools
import glob
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from data import IMAGE_EXTS, letterbox, xywh2xyxy, xyxy2xywh
from model import load_model

VIDEO_EXTS = {'.asf', '.avi', '.gif', '.m4v', '.mkv', '.mov', '.mp4', '.mpeg', '.mpg', '.ts', '.wmv'}
PALETTE = [tuple(int(h[i:i + 2], 16) for i in (4, 2, 0)) for h in (  # BGR, the original's 20 colours
    'FF3838', 'FF9D97', 'FF701F', 'FFB21D', 'CFD231', '48F90A', '92CC17', '3DDB86', '1A9334', '00D4BB',
    '2C99A8', '00C2FF', '344593', '6473FF', '0018EC', '8438FF', '520085', 'CB38FF', 'FF95C8', 'FF37C7')]


@functools.lru_cache(maxsize=None)
def torchvision_nms():
    # `import torchvision` costs ~1.5 s (it imports every model and dataset); its compiled ops alone are free
    try:
        import importlib.util
        lib = glob.glob(os.path.join(importlib.util.find_spec('torchvision').submodule_search_locations[0], '_C*.*'))
        torch.ops.load_library(sorted(lib)[0])
        return torch.ops.torchvision.nms
    except Exception:
        import torchvision
        return torchvision.ops.nms


def non_max_suppression(pred, conf_thres=0.25, iou_thres=0.45, classes=None, agnostic=False,
                        multi_label=False, max_det=300, max_nms=30000, max_wh=7680):
    """pred (b, N, 5+nc) decoded model output -> list of (n, 6) tensors [x1, y1, x2, y2, conf, cls] per image.
    conf = objectness * class score; multi_label keeps every class above conf_thres per box (val does)."""
    time_limit, t0 = 0.5 + 0.05 * pred.shape[0], time.time()
    out = [torch.zeros((0, 6), device=pred.device)] * pred.shape[0]
    for i, x in enumerate(pred):
        x = x[x[:, 4] > conf_thres]
        if not len(x):
            continue
        scores = x[:, 5:] * x[:, 4:5]
        box = xywh2xyxy(x[:, :4])
        if multi_label and scores.shape[1] > 1:
            j, k = (scores > conf_thres).nonzero(as_tuple=False).T
            x = torch.cat((box[j], scores[j, k, None], k[:, None].float()), 1)
        else:
            conf, k = scores.max(1, keepdim=True)
            x = torch.cat((box, conf, k.float()), 1)[conf.view(-1) > conf_thres]
        if classes is not None:
            x = x[(x[:, 5:6] == torch.tensor(classes, device=x.device)).any(1)]
        if not len(x):
            continue
        x = x[x[:, 4].argsort(descending=True)[:max_nms]]
        offsets = x[:, 5:6] * (0 if agnostic else max_wh)  # shift each class apart so boxes of different classes never overlap
        keep = torchvision_nms()(x[:, :4] + offsets, x[:, 4], iou_thres)[:max_det]
        out[i] = x[keep]
        if time.time() - t0 > time_limit:
            print(f'WARNING: NMS time limit {time_limit:.3f}s exceeded', file=sys.stderr)
            break
    return out


def scale_boxes(boxes, from_shape, to_shape, ratio_pad=None):
    """Map xyxy boxes from the letterboxed image (h, w) back to the original image (h, w), clipped."""
    if ratio_pad is None:
        gain = min(from_shape[0] / to_shape[0], from_shape[1] / to_shape[1])
        pad = (from_shape[1] - to_shape[1] * gain) / 2, (from_shape[0] - to_shape[0] * gain) / 2
    else:
        gain, pad = ratio_pad
    boxes[:, [0, 2]] = ((boxes[:, [0, 2]] - pad[0]) / gain).clamp(0, to_shape[1])
    boxes[:, [1, 3]] = ((boxes[:, [1, 3]] - pad[1]) / gain).clamp(0, to_shape[0])
    return boxes


def check_img_size(img, stride=32):
    if img % stride:  # the feature maps of the 3 levels must align
        print(f'WARNING: --img {img} is not a multiple of the stride {stride}, using {img - img % stride + stride}')
    return -(-img // stride) * stride


def increment_path(path):
    """runs/detect/exp -> runs/detect/exp2, exp3, ... whichever is free first."""
    path, n = Path(path), 2
    candidate = path
    while candidate.exists():
        candidate, n = Path(f'{path}{n}'), n + 1
    return candidate


def draw_box(img, xyxy, label, color, thickness):
    p1, p2 = (int(xyxy[0]), int(xyxy[1])), (int(xyxy[2]), int(xyxy[3]))
    cv2.rectangle(img, p1, p2, color, thickness, cv2.LINE_AA)
    if label:
        font_thickness = max(thickness - 1, 1)
        w, h = cv2.getTextSize(label, 0, thickness / 3, font_thickness)[0]
        above = p1[1] - h >= 3  # the label sits above the box unless that leaves the image
        q = (p1[0] + w, p1[1] - h - 3 if above else p1[1] + h + 3)
        cv2.rectangle(img, p1, q, color, -1, cv2.LINE_AA)
        text_color = (0, 0, 0) if sum(color) > 450 else (255, 255, 255)
        cv2.putText(img, label, (p1[0], p1[1] - 2 if above else p1[1] + h + 2), 0, thickness / 3,
                    text_color, font_thickness, cv2.LINE_AA)


def expand_sources(sources):
    """Yields (path, error or None) for each image or video named by files, folders or globs."""
    for s in sources:
        if any(c in s for c in '*?['):
            files = sorted(glob.glob(s, recursive=True))
        elif os.path.isdir(s):
            files = sorted(os.path.join(s, f) for f in os.listdir(s))
            files = [f for f in files if Path(f).suffix.lower() in IMAGE_EXTS | VIDEO_EXTS]
        else:
            files = [s]
        if not files:
            yield s, 'no such file or directory'
        for f in files:
            if not os.path.isfile(f):
                yield f, 'no such file'
            elif Path(f).suffix.lower() not in IMAGE_EXTS | VIDEO_EXTS:
                yield f, f'not an image or video (supported: {" ".join(sorted(IMAGE_EXTS | VIDEO_EXTS))})'
            else:
                yield f, None


def read_frames(path):
    """Yields (frame BGR, frame index, frame count, fps); one frame for an image. Raises on unreadable files."""
    if Path(path).suffix.lower() in IMAGE_EXTS:
        img = cv2.imread(path)
        if img is None:
            raise ValueError('cannot decode image (corrupt or not an image)')
        yield img, 0, 1, 0
        return
    cap, i = cv2.VideoCapture(path), 0
    count, fps = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), cap.get(cv2.CAP_PROP_FPS) or 30
    while (frame := cap.read()[1]) is not None:
        yield frame, i, count, fps
        i += 1
    cap.release()
    if not i:
        raise ValueError('cannot decode video')


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('source', nargs='+', help='images, videos, folders or globs')
    p.add_argument('--weights', default='yolov5n.pt', help='official yolov5*.pt or a checkpoint of train.py')
    p.add_argument('--img', '--img-size', '--imgsz', type=int, default=640, help='inference size (pixels)')
    p.add_argument('--conf-thres', type=float, default=0.25)
    p.add_argument('--iou-thres', type=float, default=0.45)
    p.add_argument('--max-det', type=int, default=1000)
    p.add_argument('--classes', nargs='+', type=int, help='keep only these class indices')
    p.add_argument('--agnostic-nms', action='store_true')
    p.add_argument('--device', default='', help='cpu, 0, cuda:0 ... (default: cuda if available)')
    p.add_argument('--save-txt', action='store_true', help='save YOLO labels to labels/*.txt')
    p.add_argument('--save-conf', action='store_true', help='add confidences to --save-txt labels')
    p.add_argument('--nosave', action='store_true', help='do not save annotated images or videos')
    p.add_argument('--project', default='runs/detect')
    p.add_argument('--name', default='exp')
    p.add_argument('--exist-ok', action='store_true', help='reuse project/name instead of incrementing')
    p.add_argument('--line-thickness', type=int, default=3)
    p.add_argument('--hide-labels', action='store_true')
    p.add_argument('--hide-conf', action='store_true')
    opt = p.parse_args(argv)
    opt.img = check_img_size(opt.img)
    return opt


def select_device(device=''):
    """'' (CUDA if there is one), 'cpu', '0', 'cuda:1', or '0,1' (the first; more GPUs need torchrun)."""
    device = str(device).strip().lower().replace('cuda:', '')
    if device == 'cpu' or (not device and not torch.cuda.is_available()):
        return torch.device('cpu')
    if not torch.cuda.is_available():
        raise SystemExit(f'--device {device}: CUDA is not available here; use --device cpu')
    return torch.device('cuda', int(device.split(',')[0] or 0))


def load_weights(weights, device='cpu', fuse=False):
    """load_model for the command line: a missing or bad file ends the program with its message."""
    try:
        return load_model(weights, device, fuse)[0]
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f'ERROR: {e}')


@torch.inference_mode()
def run(opt):
    device = select_device(opt.device)
    model = load_weights(opt.weights, device, fuse=True)
    if device.type == 'cpu':
        model = model.to(memory_format=torch.channels_last)  # faster convolutions with oneDNN on CPU
    half = device.type == 'cuda'
    if half:
        model.half()
    names = model.names
    save_dir = Path(opt.project) / opt.name if opt.exist_ok else increment_path(Path(opt.project) / opt.name)
    (save_dir / 'labels' if opt.save_txt else save_dir).mkdir(parents=True, exist_ok=True)
    sources = list(expand_sources(opt.source))
    n_done, n_labels, dt, shape = 0, 0, [0.0, 0.0, 0.0], None
    for idx, (path, error) in enumerate(sources, 1):
        if error:
            print(f'ERROR: {path}: {error}, skipped', file=sys.stderr)
            continue
        writer, video = None, Path(path).suffix.lower() in VIDEO_EXTS
        try:
            for frame, fi, count, fps in read_frames(path):
                t0 = time.perf_counter()
                img, ratio, pad = letterbox(frame, opt.img, stride=32, auto=True)
                x = torch.from_numpy(np.ascontiguousarray(img[:, :, ::-1].transpose(2, 0, 1))).to(device)
                x = (x.half() if half else x.float())[None] / 255
                t1 = time.perf_counter()
                pred = model(x)[0]
                t2 = time.perf_counter()
                det = non_max_suppression(pred, opt.conf_thres, opt.iou_thres, opt.classes, opt.agnostic_nms,
                                          max_det=opt.max_det)[0].float()
                t3 = time.perf_counter()
                dt = [a + b for a, b in zip(dt, (t1 - t0, t2 - t1, t3 - t2))]
                shape = tuple(x.shape)
                det[:, :4] = scale_boxes(det[:, :4], x.shape[2:], frame.shape[:2]).round()
                counts = [(names[int(c)], int((det[:, 5] == c).sum())) for c in det[:, 5].unique()]
                summary = ''.join(f'{n} {name}{"s" * (n > 1)}, ' for name, n in counts)
                where = f'video {idx}/{len(sources)} (frame {fi + 1}/{count})' if video else f'image {idx}/{len(sources)}'
                print(f'{where} {path}: {x.shape[2]}x{x.shape[3]} {summary or "(no detections), "}{(t2 - t1) * 1e3:.1f}ms')
                stem = Path(path).stem + (f'_{fi + 1}' if video else '')
                if opt.save_txt and len(det):
                    gain = torch.tensor(frame.shape)[[1, 0, 1, 0]]
                    with open(save_dir / 'labels' / f'{stem}.txt', 'w') as f:
                        for *xyxy, conf, cls in reversed(det.tolist()):
                            xywh = (xyxy2xywh(torch.tensor(xyxy)) / gain).tolist()
                            row = (int(cls), *xywh, conf) if opt.save_conf else (int(cls), *xywh)
                            f.write(' '.join(f'{v:g}' for v in row) + '\n')
                    n_labels += 1
                if not opt.nosave:
                    for *xyxy, conf, cls in reversed(det.tolist()):
                        label = None if opt.hide_labels else (names[int(cls)] if opt.hide_conf else f'{names[int(cls)]} {conf:.2f}')
                        draw_box(frame, xyxy, label, PALETTE[int(cls) % len(PALETTE)], opt.line_thickness)
                    if not video:
                        cv2.imwrite(str(save_dir / Path(path).name), frame)
                    else:
                        if writer is None:
                            writer = cv2.VideoWriter(str(save_dir / f'{Path(path).stem}.mp4'),
                                                     cv2.VideoWriter_fourcc(*'mp4v'), fps, frame.shape[1::-1])
                        writer.write(frame)
                n_done += 1
        except Exception as e:
            print(f'ERROR: {path}: {e}, skipped', file=sys.stderr)
        finally:
            if writer is not None:
                writer.release()
    if not n_done:
        print('ERROR: nothing could be processed', file=sys.stderr)
        return 1
    pre, inf, nms = (t * 1e3 / n_done for t in dt)
    print(f'Speed: {pre:.1f}ms pre-process, {inf:.1f}ms inference, {nms:.1f}ms NMS per image at shape {shape}')
    if not opt.nosave or opt.save_txt:
        print(f'Results saved to {save_dir}' + (f'\n{n_labels} labels saved to {save_dir / "labels"}' if opt.save_txt else ''))
    return 0


if __name__ == '__main__':
    sys.exit(run(parse_args()))
