"""
Run a YOLOv5 model on images, folders, globs, videos or streams:  python detect.py img.jpg [more ...] (or --source)
Annotated results go to runs/detect/exp (then exp2, exp3, ...), YOLO labels with --save-txt, crops with --save-crop.
An entry point beside train.py, on top of data.py, model.py and export.py; it never imports train.py.
"""
import argparse
import sys
import threading
import time
from pathlib import Path

import cv2
import torch

from data import letterbox, to_tensor
from export import load_any
from model import non_max_suppression, predict, scale_boxes
from plumbing import (IMAGE_EXTS, check_img_size, clock, device_name, expand_sources, half_dtype, is_stream, number,
                      or_exit, output_stem, read_frames, run_dir, save_image, save_results, select_device,
                      stop_on_ctrl_c, weights_file)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('source', nargs='*', help='images, videos, folders, globs, webcams (0), URLs, .streams lists')
    p.add_argument('--source', dest='more_sources', nargs='+', default=[], help='the same, as a flag')
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
    p.add_argument('--augment', action='store_true', help='test-time augmentation: 3 scales, one flipped')
    p.add_argument('--save-crop', action='store_true', help='save each box, cropped, to crops/CLASS/')
    p.add_argument('--vid-stride', type=number(int, 1), default=1, help='every n-th frame of videos and streams')
    p.add_argument('--view-img', action='store_true', help='show the results (needs an OpenCV with windows)')
    opt = p.parse_args(argv)
    opt.source += opt.more_sources
    if not opt.source:
        p.error('the following arguments are required: source (or --source)')
    opt.img = check_img_size(opt.img)
    return opt


@torch.inference_mode()
def run(opt, stop=None):
    """Returns the exit code. stop: an event that ends the run after the current frame (Ctrl-C on the command line)."""
    device = select_device(opt.device)
    model = or_exit(load_any, opt.weights, device, fuse=True).to(memory_format=torch.channels_last)  # faster convs
    dtype = half_dtype(device) if opt.half else None  # fp32 unless --half: the original's outputs
    names = model.names
    if opt.classes and max(opt.classes) >= len(names):  # only known once the model is loaded
        print(f'detect.py: error: argument --classes: {max(opt.classes)} is not a class of {opt.weights} '
              f'(0 to {len(names) - 1})', file=sys.stderr)
        return 2
    if opt.view_img:
        print('WARNING: --view-img: opencv-python-headless (requirements.txt) has no windows: see the saved results',
              file=sys.stderr)
    stride = model.max_stride  # 64 for the P6 models
    img_size = check_img_size(opt.img, stride=stride)
    save_dir = run_dir(opt.project, opt.name, opt.exist_ok)
    (save_dir / 'labels' if opt.save_txt else save_dir).mkdir(parents=True, exist_ok=True)
    sources = list(expand_sources(opt.source))
    stop = stop or threading.Event()
    stems = set()
    n_done = 0  # frames
    n_labels = 0  # label files written
    dt = [0.0, 0.0, 0.0]  # seconds: pre-processing, inference, NMS
    for idx, (path, error) in enumerate(sources, 1):
        stem = output_stem(path, stems)  # unique in this run: same-named inputs do not overwrite each other
        n_before = n_done
        writer = None
        video = Path(path).suffix.lower() not in IMAGE_EXTS  # webcams and streams too
        for frame, fi, count, fps in () if error else read_frames(path, opt.vid_stride):
            t0 = time.perf_counter()
            x = to_tensor(letterbox(frame, img_size, stride=stride)[0]).to(device).float()[None] / 255
            t1 = clock(device)  # once the GPU has done its part
            pred = next(predict(model, x, dtype, opt.augment))[0]
            t2 = clock(device)
            det = non_max_suppression(pred, opt.conf_thres, opt.iou_thres, opt.classes, opt.agnostic_nms,
                                      max_det=opt.max_det)[0]
            dt = [a + b for a, b in zip(dt, (t1 - t0, t2 - t1, time.perf_counter() - t2))]
            det[:, :4] = scale_boxes(det[:, :4], x.shape[2:], frame.shape[:2]).round()
            counts = [(names[int(c)], int((det[:, 5] == c).sum())) for c in det[:, 5].unique()]
            summary = ''.join(f'{n} {name}{"s" if n > 1 else ""}, ' for name, n in counts) or '(no detections), '
            of = f'/{count}' if count else ''
            where = f'video {idx}/{len(sources)} (frame {fi + 1}{of})' if video else f'image {idx}/{len(sources)}'
            print(f'{where} {path}: {x.shape[2]}x{x.shape[3]} {summary}{(t2 - t1) * 1e3:.1f}ms', flush=True)
            n_done += 1
            try:
                n_labels += save_results(opt, names, save_dir, stem, fi + 1 if video else None, frame, det)
                if video and not opt.nosave:
                    writer = writer or cv2.VideoWriter(str(save_dir / f'{stem}.mp4'), cv2.VideoWriter_fourcc(*'mp4v'),
                                                       fps, frame.shape[1::-1])
                    writer.write(frame)
                elif not opt.nosave:
                    save_image(frame, save_dir / (stem + Path(path).suffix))
            except OSError as e:  # reported, and the run goes on
                print(f'ERROR: {e}', file=sys.stderr)
            if stop.is_set():
                break
        if writer is not None:
            writer.release()  # finalizes the video, also when Ctrl-C stopped it
        if n_done == n_before:  # a bad input is reported and skipped: the run goes on
            what = 'open stream' if is_stream(path) else 'decode video' if video else 'decode image'
            print(f'ERROR: {path}: {error or "cannot " + what}, skipped', file=sys.stderr)
        if stop.is_set():
            print(f'Interrupted (Ctrl-C): stopped at {path}', file=sys.stderr)
            break
    if not n_done:
        print('ERROR: nothing could be processed', file=sys.stderr)
        return 1
    pre, inf, nms = (t * 1e3 / n_done for t in dt)
    print(f'Speed: {pre:.1f}ms pre-process, {inf:.1f}ms inference, {nms:.1f}ms NMS per image at shape {tuple(x.shape)}')
    if not opt.nosave or opt.save_txt:
        print(f'Results saved to {save_dir}')
        if opt.save_txt:
            print(f'{n_labels} labels saved to {save_dir / "labels"}')
    return 130 if stop.is_set() else 0


if __name__ == '__main__':
    sys.exit(run(parse_args(), stop_on_ctrl_c()))
