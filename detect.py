"""
Run a YOLOv5 model on images, folders, globs, videos or streams:
    python detect.py img.jpg [more ...]     (or --source img.jpg)
Annotated results go to runs/detect/exp (then exp2, exp3, ...), YOLO labels with --save-txt,
crops with --save-crop. An entry point beside train.py, on top of data.py, model.py and export.py.
"""
import sys
import threading
import time
from pathlib import Path

import cv2
import torch

from data import letterbox, to_tensor
from export import load_any
from model import non_max_suppression, predict, scale_boxes
from support.cli import check_img_size, clock, detect_args, half_dtype, or_exit, select_device
from support.datasets import IMAGE_EXTS
from support.files import save_image
from support.runs import run_dir
from support.sources import expand_sources, is_stream, output_stem, read_frames, save_results
from support.sources import stop_on_ctrl_c


def parse_args(argv=None):
    """detect.py's flags, the original's (support/cli.py lists them)."""
    return detect_args(argv, __doc__)


def describe(det, names):
    """'4 persons, 1 bus, ' for an image's detections, as the original prints them."""
    counts = [(names[int(c)], int((det[:, 5] == c).sum())) for c in det[:, 5].unique()]
    text = ''.join(f'{n} {name}{"s" if n > 1 else ""}, ' for name, n in counts)
    return text or '(no detections), '


@torch.inference_mode()
def run(opt, stop=None):
    """Returns the exit code. stop: an event that ends the run after the current frame (Ctrl-C)."""
    device = select_device(opt.device)
    model = or_exit(load_any, opt.weights, device, fuse=True)
    model = model.to(memory_format=torch.channels_last)  # the convolutions' fastest layout
    dtype = half_dtype(device) if opt.half else None  # fp32 unless --half: the original's outputs
    names = model.names
    if opt.classes and max(opt.classes) >= len(names):  # only known once the model is loaded
        print(f'detect.py: error: argument --classes: {max(opt.classes)} is not a class of '
              f'{opt.weights} (0 to {len(names) - 1})', file=sys.stderr)
        return 2
    if opt.view_img:
        print('WARNING: --view-img: opencv-python-headless (requirements.txt) has no windows: '
              'see the saved results', file=sys.stderr)
    stride = model.max_stride  # 64 for the P6 models
    img_size = check_img_size(opt.img, stride=stride)
    save_dir = run_dir(opt.project, opt.name, opt.exist_ok)
    (save_dir / 'labels' if opt.save_txt else save_dir).mkdir(parents=True, exist_ok=True)
    sources = list(expand_sources(opt.source))
    stop = stop or threading.Event()
    stems = set()
    frames_done = 0
    label_files = 0
    times = [0.0, 0.0, 0.0]  # seconds: pre-processing, inference, NMS
    for number_of_source, (path, error) in enumerate(sources, 1):
        stem = output_stem(path, stems)  # unique in this run: same-named inputs keep their outputs
        frames_before = frames_done
        writer = None
        video = Path(path).suffix.lower() not in IMAGE_EXTS  # webcams and streams too
        frames = () if error else read_frames(path, opt.vid_stride)
        for frame, frame_index, frame_count, fps in frames:
            start = time.perf_counter()
            x = to_tensor(letterbox(frame, img_size, stride=stride)[0])
            x = x.to(device).float()[None] / 255
            loaded = clock(device)  # once the GPU has done its part
            pred = next(predict(model, x, dtype, opt.augment))[0]
            inferred = clock(device)
            det = non_max_suppression(pred, opt.conf_thres, opt.iou_thres, opt.classes,
                                      opt.agnostic_nms, max_det=opt.max_det)[0]
            steps = (loaded - start, inferred - loaded, time.perf_counter() - inferred)
            times = [total + step for total, step in zip(times, steps)]
            # each row of det: x1 y1 x2 y2 (pixels of the frame) confidence class
            det[:, :4] = scale_boxes(det[:, :4], x.shape[2:], frame.shape[:2]).round()
            where = f'image {number_of_source}/{len(sources)}'
            if video:
                of = f'/{frame_count}' if frame_count else ''
                where = f'video {number_of_source}/{len(sources)} (frame {frame_index + 1}{of})'
            print(f'{where} {path}: {x.shape[2]}x{x.shape[3]} {describe(det, names)}'
                  f'{(inferred - loaded) * 1e3:.1f}ms', flush=True)
            frames_done += 1
            try:
                frame_number = frame_index + 1 if video else None
                label_files += save_results(opt, names, save_dir, stem, frame_number, frame, det)
                if video and not opt.nosave:
                    if writer is None:
                        mp4 = cv2.VideoWriter_fourcc(*'mp4v')
                        video_path = str(save_dir / f'{stem}.mp4')
                        writer = cv2.VideoWriter(video_path, mp4, fps, frame.shape[1::-1])
                    writer.write(frame)
                elif not opt.nosave:
                    save_image(frame, save_dir / (stem + Path(path).suffix))
            except OSError as e:  # reported, and the run goes on
                print(f'ERROR: {e}', file=sys.stderr)
            if stop.is_set():
                break
        if writer is not None:
            writer.release()  # finalizes the video, also when Ctrl-C stopped it
        if frames_done == frames_before:  # a bad input is reported and skipped: the run goes on
            what = 'open stream' if is_stream(path) else 'decode video' if video else 'decode image'
            print(f'ERROR: {path}: {error or "cannot " + what}, skipped', file=sys.stderr)
        if stop.is_set():
            print(f'Interrupted (Ctrl-C): stopped at {path}', file=sys.stderr)
            break
    if not frames_done:
        print('ERROR: nothing could be processed', file=sys.stderr)
        return 1
    pre, inference, nms = (t * 1e3 / frames_done for t in times)
    print(f'Speed: {pre:.1f}ms pre-process, {inference:.1f}ms inference, {nms:.1f}ms NMS per image '
          f'at shape {tuple(x.shape)}')
    if not opt.nosave or opt.save_txt:
        print(f'Results saved to {save_dir}')
        if opt.save_txt:
            print(f'{label_files} labels saved to {save_dir / "labels"}')
    return 130 if stop.is_set() else 0


if __name__ == '__main__':
    sys.exit(run(parse_args(), stop_on_ctrl_c()))
