"""
Run a YOLOv5 model on images, folders, globs or videos:  python detect.py img.jpg [more ...]
Annotated results go to runs/detect/exp (then exp2, exp3, ...), YOLO labels with --save-txt.
An entry point beside train.py, on top of data.py, model.py and export.py; it never imports train.py.
"""
import argparse
import glob
import os
import sys
import time
from pathlib import Path

import cv2
import torch

from data import letterbox, to_tensor
from export import load_any
from model import non_max_suppression, predict, scale_boxes
from plumbing import (IMAGE_EXTS, PALETTE, VIDEO_EXTS, check_img_size, clock, device_name, draw_box, half_dtype,
                      number, or_exit, run_dir, select_device, weights_file, xyxy2xywh)


def expand_sources(sources):
    """Yields (path, error or None) for each image or video named by files, folders or globs."""
    media = IMAGE_EXTS | VIDEO_EXTS
    for s in sources:
        if any(c in s for c in '*?['):
            files = sorted(glob.glob(s, recursive=True))
        elif os.path.isdir(s):
            files = sorted(os.path.join(s, f) for f in os.listdir(s) if Path(f).suffix.lower() in media)
        else:
            files = [s]
        if not files:
            yield s, 'no such file or directory'
        for f in files:
            if not os.path.isfile(f):
                yield f, 'no such file'
            elif Path(f).suffix.lower() not in media:
                yield f, f'not an image or video (supported: {" ".join(sorted(media))})'
            else:
                yield f, None


def read_frames(path):
    """Yields (frame BGR, index, frame count, fps): one frame for an image, none for a file that does not decode."""
    if Path(path).suffix.lower() in IMAGE_EXTS:
        img = cv2.imread(path)
        if img is not None:
            yield img, 0, 1, 0
        return
    cap, i = cv2.VideoCapture(path), 0
    count, fps = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), cap.get(cv2.CAP_PROP_FPS) or 30
    while (frame := cap.read()[1]) is not None:
        yield frame, i, count, fps
        i += 1
    cap.release()


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('source', nargs='+', help='images, videos, folders or globs')
    p.add_argument('--weights', type=weights_file, default='yolov5n.pt', help='yolov5*.pt, ours, or .torchscript/.onnx')
    p.add_argument('--img', '--img-size', '--imgsz', type=number(int, 1), default=640, help='inference size (pixels)')
    p.add_argument('--conf-thres', type=number(float, 0, 1), default=0.25)
    p.add_argument('--iou-thres', type=number(float, 0, 1), default=0.45)
    p.add_argument('--max-det', type=number(int, 1), default=1000)
    p.add_argument('--classes', nargs='+', type=number(int, 0), help='keep only these class indices')
    p.add_argument('--agnostic-nms', action='store_true')
    p.add_argument('--device', type=device_name, default='', help='cpu, 0, cuda:0 ... (default: cuda if available)')
    p.add_argument('--save-txt', action='store_true', help='save YOLO labels to labels/*.txt')
    p.add_argument('--save-conf', action='store_true', help='add confidences to --save-txt labels')
    p.add_argument('--nosave', action='store_true', help='do not save annotated images or videos')
    p.add_argument('--project', default='runs/detect')
    p.add_argument('--name', default='exp')
    p.add_argument('--exist-ok', action='store_true', help='reuse project/name instead of incrementing')
    p.add_argument('--line-thickness', type=number(int, 1), default=3)
    p.add_argument('--hide-labels', action='store_true')
    p.add_argument('--hide-conf', action='store_true')
    p.add_argument('--half', action='store_true', help='16-bit where faster: fp16 on CUDA, bf16 on CPUs with AMX')
    opt = p.parse_args(argv)
    opt.img = check_img_size(opt.img)
    return opt


@torch.inference_mode()
def run(opt):
    device = select_device(opt.device)
    model = or_exit(load_any, opt.weights, device, fuse=True).to(memory_format=torch.channels_last)  # faster convs
    dtype, names = half_dtype(device) if opt.half else None, model.names  # fp32 unless --half, as in the original
    if opt.classes and max(opt.classes) >= len(names):  # only known once the model is loaded
        print(f'detect.py: error: argument --classes: {max(opt.classes)} is not a class of {opt.weights} '
              f'(0 to {len(names) - 1})', file=sys.stderr)
        return 2
    save_dir = run_dir(opt.project, opt.name, opt.exist_ok)
    (save_dir / 'labels' if opt.save_txt else save_dir).mkdir(parents=True, exist_ok=True)
    sources = list(expand_sources(opt.source))
    n_done, n_labels, dt = 0, 0, [0.0, 0.0, 0.0]
    for idx, (path, error) in enumerate(sources, 1):
        writer, video, n_before = None, Path(path).suffix.lower() in VIDEO_EXTS, n_done
        for frame, fi, count, fps in () if error else read_frames(path):
            t0 = time.perf_counter()
            x = to_tensor(letterbox(frame, opt.img)[0]).to(device).float()[None] / 255
            t1 = clock(device)  # once the GPU has done its part
            pred = next(predict(model, x, dtype))[0]
            t2 = clock(device)
            det = non_max_suppression(pred, opt.conf_thres, opt.iou_thres, opt.classes, opt.agnostic_nms,
                                      max_det=opt.max_det)[0]
            dt = [a + b for a, b in zip(dt, (t1 - t0, t2 - t1, time.perf_counter() - t2))]
            det[:, :4] = scale_boxes(det[:, :4], x.shape[2:], frame.shape[:2]).round()
            counts = [(names[int(c)], int((det[:, 5] == c).sum())) for c in det[:, 5].unique()]
            summary = ''.join(f'{n} {name}{"s" * (n > 1)}, ' for name, n in counts) or '(no detections), '
            where = f'video {idx}/{len(sources)} (frame {fi + 1}/{count})' if video else f'image {idx}/{len(sources)}'
            print(f'{where} {path}: {x.shape[2]}x{x.shape[3]} {summary}{(t2 - t1) * 1e3:.1f}ms')
            if opt.save_txt and len(det):  # YOLO rows `cls xc yc w h [conf]`, normalized to the image
                gain = torch.tensor(frame.shape, device=det.device)[[1, 0, 1, 0]]
                rows = torch.cat((det[:, 5:], xyxy2xywh(det[:, :4]) / gain, det[:, 4:5]), 1).tolist()[::-1]
                label_file = save_dir / 'labels' / f'{Path(path).stem}{f"_{fi + 1}" * video}.txt'
                label_file.write_text(''.join(' '.join(f'{v:g}' for v in r[:5 + opt.save_conf]) + '\n' for r in rows))
                n_labels += 1
            if not opt.nosave:
                for *xyxy, conf, cls in reversed(det.tolist()):
                    label = None if opt.hide_labels else names[int(cls)] + ('' if opt.hide_conf else f' {conf:.2f}')
                    draw_box(frame, xyxy, label, PALETTE[int(cls) % len(PALETTE)], opt.line_thickness)
                if video:
                    writer = writer or cv2.VideoWriter(str(save_dir / f'{Path(path).stem}.mp4'),
                                                       cv2.VideoWriter_fourcc(*'mp4v'), fps, frame.shape[1::-1])
                    writer.write(frame)
                else:
                    cv2.imwrite(str(save_dir / Path(path).name), frame)
            n_done += 1
        if writer is not None:
            writer.release()
        if n_done == n_before:  # a bad input is reported and skipped: the run goes on
            why = error or f'cannot decode {"video" if video else "image (corrupt or not an image)"}'
            print(f'ERROR: {path}: {why}, skipped', file=sys.stderr)
    if not n_done:
        print('ERROR: nothing could be processed', file=sys.stderr)
        return 1
    pre, inf, nms = (t * 1e3 / n_done for t in dt)
    print(f'Speed: {pre:.1f}ms pre-process, {inf:.1f}ms inference, {nms:.1f}ms NMS per image at shape {tuple(x.shape)}')
    if not opt.nosave or opt.save_txt:
        print(f'Results saved to {save_dir}' + f'\n{n_labels} labels saved to {save_dir / "labels"}' * opt.save_txt)
    return 0


if __name__ == '__main__':
    sys.exit(run(parse_args()))
