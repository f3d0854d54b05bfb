"""Tests: python -m pytest -q test_all.py  (needs ../shared/ for the official weights and COCO128)."""
import os
import pickle
import re
import shutil
import subprocess
import sys
import zipfile
from copy import deepcopy
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parent
SHARED = ROOT.parent / 'shared'
WEIGHTS = SHARED / 'weights' / 'yolov5n.pt'
COCO128 = SHARED / 'datasets' / 'coco128'
BUS = SHARED / 'images' / 'bus.jpg'
sys.path.insert(0, str(ROOT))

import data  # noqa: E402
import detect  # noqa: E402
import model as M  # noqa: E402
import support.checkpoints  # noqa: E402
import support.cli  # noqa: E402
import support.console  # noqa: E402
import support.data_yaml  # noqa: E402
import support.datasets  # noqa: E402
import support.downloads  # noqa: E402
import support.plots  # noqa: E402
import support.results  # noqa: E402
import support.runs  # noqa: E402
import support.val_benchmarks  # noqa: E402


def shared(path):
    if not path.exists():
        pytest.fail(f'{path} is missing: the tests need the shared data folder ../shared (see ../shared/README.md)')
    return path


@pytest.fixture(scope='session')
def yolov5n():
    return M.load_model(shared(WEIGHTS))


def read_labels(path):
    return np.loadtxt(path, ndmin=2)


def match_rows(ours, ref, cols=slice(1, None)):
    """Pairs each reference row with our row of the same class nearest to it; returns the max abs difference."""
    assert len(ours) == len(ref), f'{len(ours)} detections, expected {len(ref)}'
    worst = 0.0
    for row in ref:
        same = ours[ours[:, 0] == row[0]]
        assert len(same), f'class {row[0]} missing'
        worst = max(worst, np.abs(same[:, cols] - row[cols]).max(1).min())
    return worst


def scene(h, w, boxes, seed=0):
    """A textured image with filled coloured rectangles at the given pixel xyxy boxes."""
    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur(rng.integers(0, 255, (h, w, 3), dtype=np.uint8), (0, 0), 3)
    colors = [(0, 0, 255), (0, 255, 0), (255, 0, 0), (0, 255, 255), (255, 0, 255)]
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        cv2.rectangle(img, (int(x1), int(y1)), (int(x2) - 1, int(y2) - 1), colors[i % len(colors)], -1)
    return img


# ---------------------------------------------------------------------------------------------- model.py

@pytest.mark.parametrize('scale,params,fused', [('n', 1872157, 1867405), ('s', 7235389, 7225885),
                                                ('m', 21190557, None), ('l', 46563709, None), ('x', 86749405, None)])
def test_scales_have_the_original_parameter_counts(scale, params, fused):
    net = M.YOLOv5(scale)
    assert sum(p.numel() for p in net.parameters()) == params
    if fused:
        assert sum(p.numel() for p in net.fuse().parameters()) == fused


def test_forward_shapes_on_non_square_input_and_decoding():
    torch.manual_seed(0)
    net = M.YOLOv5('n', nc=3)
    x = torch.rand(2, 3, 192, 256)
    raw = net.train()(x)
    assert [tuple(r.shape) for r in raw] == [(2, 3, 24, 32, 8), (2, 3, 12, 16, 8), (2, 3, 6, 8, 8)]
    net.eval()
    with torch.no_grad():
        pred, raw = net(x)
    assert pred.shape == (2, 3 * (24 * 32 + 12 * 16 + 6 * 8), 8)
    # decoding by hand, level 1 (stride 16), anchor 2, cell (y=5, x=7)
    p = raw[1][1, 2, 5, 7].sigmoid()
    anchor = torch.tensor(M.ANCHORS['p5'][1][4:6], dtype=torch.float32)
    xy = (p[:2] * 2 - 0.5 + torch.tensor([7.0, 5.0])) * 16
    wh = (p[2:4] * 2) ** 2 * anchor
    row = pred[1, 3 * 24 * 32 + (2 * 12 + 5) * 16 + 7]
    torch.testing.assert_close(row, torch.cat((xy, wh, p[4:])), rtol=1e-5, atol=1e-4)


def test_detect_bias_init_gives_the_yolov5_prior():
    net = M.YOLOv5('n', nc=80)
    b = net.detect.m[0].bias.view(3, -1)
    assert abs(b[:, 4].mean().item() - np.log(8 / 80 ** 2)) < 0.1  # default conv bias is small uniform noise
    assert abs(b[:, 5:].mean().item() - np.log(0.6 / 79.00001)) < 0.1


def test_fuse_keeps_outputs(yolov5n):
    net = M.load_model(shared(WEIGHTS))
    x = torch.rand(1, 3, 224, 160)
    with torch.no_grad():
        before = net(x)[0]
        after = net.fuse()(x)[0]
    assert not any(hasattr(m, 'bn') for m in net.modules() if isinstance(m, M.Conv))
    torch.testing.assert_close(after, before, rtol=1e-3, atol=2e-3)


def test_official_checkpoint_loads_with_its_metadata(yolov5n):
    assert yolov5n.scale == (0.33, 0.25) and yolov5n.nc == 80 and yolov5n.names[:2] == ['person', 'bicycle']
    anchors = yolov5n.detect.anchors * yolov5n.detect.stride.view(-1, 1, 1)
    torch.testing.assert_close(anchors.view(3, 6), torch.tensor(M.ANCHORS['p5'], dtype=torch.float32))
    assert not yolov5n.training and next(yolov5n.parameters()).dtype == torch.float32


class _Evil:
    def __reduce__(self):
        return (os.system, (f'touch {self.marker}',))


def test_pickle_that_runs_code_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / 'pwned'
    evil = _Evil()
    evil.marker = marker
    for i, payload in enumerate([evil, {'model': evil}, {'model': M.YOLOv5('n').state_dict(), 'x': evil}]):
        path = tmp_path / f'evil{i}.pt'
        torch.save(payload, path)
        with pytest.raises(ValueError, match=f'evil{i}.pt: not a YOLOv5 checkpoint.*refused'):
            M.load_model(path)
    assert not marker.exists()
    # the same check on a checkpoint that looks official: a zip whose data.pkl smuggles a global call
    path = tmp_path / 'official_like.pt'
    payload = pickle.dumps({'model': evil}, protocol=2)
    with zipfile.ZipFile(path, 'w') as z:
        z.writestr('archive/data.pkl', payload)
        z.writestr('archive/version', '3\n')
    with pytest.raises(ValueError, match='refused to load global (posix|os|nt).system'):
        M.load_model(path)
    assert not marker.exists()


def test_checkpoint_in_the_originals_v7_training_format_loads(tmp_path, monkeypatch):
    """The original's v7 checkpoints: a `models.yolo.DetectionModel` pickle, names as a dict, half weights,
    Detect.stride a plain attribute, numpy numbers beside the model (an un-stripped training run)."""
    import types
    net = M.YOLOv5('s', nc=3)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    det = net.detect
    stride = det._buffers.pop('stride')
    det.__dict__['stride'] = stride
    net.__dict__.update(yaml={'nc': 3, 'depth_multiple': 0.33, 'width_multiple': 0.5, 'backbone': [[]] * 10,
                              'head': [[]] * 15}, names={0: 'a', 1: 'b', 2: 'c'})
    renames = [(M.YOLOv5, 'models.yolo', 'DetectionModel'), (M.Detect, 'models.yolo', 'Detect'),
               (M.Conv, 'models.common', 'Conv'), (M.C3, 'models.common', 'C3'),
               (M.Bottleneck, 'models.common', 'Bottleneck'), (M.SPPF, 'models.common', 'SPPF'),
               (M.Concat, 'models.common', 'Concat')]
    originals = [(cls, cls.__module__, cls.__qualname__) for cls, _, _ in renames]
    for module in ('models', 'models.yolo', 'models.common'):  # the original's module names, ours inside
        monkeypatch.setitem(sys.modules, module, types.ModuleType(module))
    try:
        for cls, module, name in renames:
            setattr(sys.modules[module], name, cls)
            cls.__module__, cls.__qualname__ = module, name
        path = tmp_path / 'v7.pt'
        torch.save({'epoch': 12, 'best_fitness': np.array([0.41]), 'model': deepcopy(net).half(), 'ema': None,
                    'updates': np.int64(300), 'opt': {'img': 640}, 'date': '2022-11-22'}, path)
    finally:
        for cls, module, name in originals:
            cls.__module__, cls.__qualname__ = module, name
    monkeypatch.undo()
    det.__dict__.pop('stride')
    det.register_buffer('stride', stride, persistent=False)
    loaded = M.load_model(path)
    assert loaded.names == ['a', 'b', 'c'] and loaded.scale == (0.33, 0.5) and loaded.nc == 3
    x = torch.rand(1, 3, 128, 160)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x)[0], net.eval().half().float()(x)[0])


def test_bad_checkpoints_get_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match='nothere.pt'):
        M.load_model(tmp_path / 'nothere.pt')
    junk = tmp_path / 'junk.pt'
    junk.write_bytes(b'not a checkpoint at all')
    with pytest.raises(ValueError, match='junk.pt: not a PyTorch checkpoint'):
        M.load_model(junk)
    r = run_detect(shared(BUS), '--weights', junk, cwd=tmp_path)  # the command line says so too, no traceback
    assert r.returncode == 2 and 'argument --weights' in r.stderr and 'junk.pt: not a checkpoint' in r.stderr
    other = tmp_path / 'other.pt'  # a zip, so a checkpoint at first sight, but not a model
    with zipfile.ZipFile(other, 'w') as z:
        z.writestr('notes.txt', 'hello')
    r = run_detect(shared(BUS), '--weights', other, cwd=tmp_path)
    assert r.returncode == 1 and 'ERROR: ' in r.stderr and 'other.pt: not a YOLOv5 checkpoint' in r.stderr
    assert 'Traceback' not in r.stderr
    liar = tmp_path / 'liar.pt'  # claims to be yolov5s but holds yolov5n weights
    torch.save({'model': M.YOLOv5('n').state_dict(), 'scale': M.SCALES['s'], 'nc': 80, 'anchors': M.ANCHORS['p5'],
                'names': support.datasets.COCO_NAMES}, liar)
    with pytest.raises(ValueError, match='liar.pt: weights do not fit'):
        M.load_model(liar)


def test_missing_official_weights_offline_says_where_to_put_them(tmp_path, monkeypatch):
    monkeypatch.setattr(support.checkpoints, 'RELEASE_URL', 'http://127.0.0.1:9/')  # nothing listens there: offline
    with pytest.raises(FileNotFoundError, match='download failed.*put it at .*yolov5s.pt'):
        M.load_model(tmp_path / 'yolov5s.pt')


def test_our_checkpoint_round_trip(tmp_path):
    net = M.YOLOv5('n', nc=2, names=['cat', 'dog'])
    path = tmp_path / 'ours.pt'
    torch.save({'model': net.state_dict(), 'scale': list(net.scale), 'nc': 2, 'anchors': M.ANCHORS['p5'],
                'names': ['cat', 'dog']}, path)
    torch.load(path, weights_only=True)
    loaded = M.load_model(path)
    assert loaded.names == ['cat', 'dog']
    x = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x)[0], net.eval()(x)[0])


# ---------------------------------------------------------------------------------------------- detect.py

def reference_nms(boxes, scores, iou_thres):
    """Greedy NMS written the slow, obvious way, to check the fast one."""
    order, keep = list(np.argsort(-scores, kind='stable')), []
    while order:
        i = order.pop(0)
        keep.append(i)
        x1 = np.maximum(boxes[i, 0], boxes[order, 0]); y1 = np.maximum(boxes[i, 1], boxes[order, 1])
        x2 = np.minimum(boxes[i, 2], boxes[order, 2]); y2 = np.minimum(boxes[i, 3], boxes[order, 3])
        inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
        area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
        iou = inter / (area(boxes[i]) + area(boxes[order]) - inter)
        order = [j for j, o in zip(order, iou) if o <= iou_thres]
    return keep


@pytest.mark.parametrize('multi_label,agnostic', [(False, False), (True, False), (False, True)])
def test_nms_matches_a_brute_force_reference(multi_label, agnostic):
    rng = np.random.default_rng(1)
    n, nc = 300, 4
    xy, wh = rng.uniform(0, 200, (n, 2)), rng.uniform(10, 60, (n, 2))
    pred = np.concatenate([xy, wh, rng.uniform(0, 1, (n, 1)), rng.uniform(0, 1, (n, nc))], 1).astype(np.float32)
    out = M.non_max_suppression(torch.from_numpy(pred)[None], 0.3, 0.5, multi_label=multi_label,
                                     agnostic=agnostic, max_det=1000)[0].numpy()
    scores = pred[:, 5:] * pred[:, 4:5]
    boxes = support.datasets.xywh2xyxy(pred[:, :4])
    cand = [(i, c) for i in range(n) for c in range(nc) if scores[i, c] > 0.3 and pred[i, 4] > 0.3
            and (multi_label or c == scores[i].argmax())]
    expected = []
    for group in ([cand] if agnostic else [[k for k in cand if k[1] == c] for c in range(nc)]):
        if group:
            b = np.array([boxes[i] for i, _ in group]); s = np.array([scores[i, c] for i, c in group])
            expected += [(*b[k], s[k], group[k][1]) for k in reference_nms(b, s, 0.5)]
    expected = np.array(sorted(expected, key=lambda r: -r[4]))
    assert out.shape == expected.shape
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-4)


def test_nms_max_det_and_classes():
    pred = torch.zeros(1, 50, 7)
    pred[0, :, 0] = torch.arange(50) * 100.0  # far apart: nothing suppressed
    pred[0, :, 2:4], pred[0, :, 4] = 20, 0.9
    pred[0, :, 5], pred[0, 25:, 6] = 0.8, 0.95
    assert len(M.non_max_suppression(pred, max_det=10)[0]) == 10
    out = M.non_max_suppression(pred, classes=[1])[0]
    assert len(out) == 25 and (out[:, 5] == 1).all()


@pytest.mark.parametrize('shape,new', [((810, 1080), 640), ((480, 640), 320), ((333, 500), 256), ((100, 80), 160)])
def test_letterbox_and_scale_boxes_round_trip(shape, new):
    img = np.full((*shape, 3), 7, np.uint8)
    out, r, (dw, dh) = data.letterbox(img, new, auto=True)
    assert max(out.shape[:2]) == new and out.shape[0] % 32 == 0 and out.shape[1] % 32 == 0
    assert out[0, 0, 0] in (7, 114)
    boxes = torch.tensor([[10.0, 20.0, 60.0, 70.0], [0.0, 0.0, shape[1], shape[0]]])
    letterboxed = boxes * r + torch.tensor([dw, dh, dw, dh])
    back = M.scale_boxes(letterboxed.clone(), out.shape[:2], shape)
    torch.testing.assert_close(back, boxes, atol=0.6, rtol=0)


def run_detect(*args, cwd):
    return subprocess.run([sys.executable, str(ROOT / 'detect.py'), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_detect_bus_matches_the_original(tmp_path):
    r = run_detect(shared(BUS), '--weights', shared(WEIGHTS), '--save-txt', '--save-conf', cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert 'bus.jpg: 640x480 4 persons, 1 bus, ' in r.stdout
    ours = read_labels(tmp_path / 'runs/detect/exp/labels/bus.txt')
    ref = read_labels(shared(SHARED / 'expected' / 'bus_yolov5n_640.txt'))
    assert match_rows(ours, ref) < 0.002
    assert (tmp_path / 'runs/detect/exp/bus.jpg').exists()


# Images that are not in shared/, derived from COCO128 ones, and the original YOLOv5's detections on them
# (yolov5n, 640, conf 0.25, iou 0.45): cls xc yc w h conf, as written by --save-txt --save-conf.
DERIVED = {
    '000000000036': (lambda im: cv2.resize(im, (im.shape[1] * 3 // 5, im.shape[0] * 3 // 5), interpolation=cv2.INTER_AREA),
                     [(25, 0.482639, 0.416667, 0.902778, 0.75, 0.443213), (0, 0.635417, 0.634115, 0.541667, 0.731771, 0.795378)]),
    '000000000064': (lambda im: cv2.resize(im, (int(im.shape[1] * 1.7), int(im.shape[0] * 1.3))),
                     [(2, 0.250613, 0.664663, 0.265931, 0.105769, 0.279106), (2, 0.226716, 0.573317, 0.058824, 0.026442, 0.284379),
                      (11, 0.278799, 0.416466, 0.082108, 0.126202, 0.386473), (2, 0.182598, 0.588341, 0.151961, 0.070913, 0.3944),
                      (2, 0.26348, 0.725361, 0.313726, 0.227163, 0.629182), (74, 0.395833, 0.186298, 0.311274, 0.245192, 0.858112)]),
    '000000000086': (lambda im: cv2.cvtColor(cv2.cvtColor(im, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)[: im.shape[0] // 2],
                     [(0, 0.410156, 0.720312, 0.246094, 0.503125, 0.869906)]),
}


def test_detect_matches_the_original_on_derived_images(tmp_path):
    for stem, (make, _) in DERIVED.items():
        img = cv2.imread(str(shared(COCO128 / 'images/train2017' / f'{stem}.jpg')))
        cv2.imwrite(str(tmp_path / f'{stem}.png'), make(img))  # upscaled, enlarged to another aspect, grey strip
    r = run_detect(*sorted(tmp_path.glob('*.png')), '--weights', WEIGHTS, '--save-txt', '--save-conf', '--nosave', cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    for stem, (_, expected) in DERIVED.items():
        ours = read_labels(tmp_path / f'runs/detect/exp/labels/{stem}.txt')
        assert match_rows(ours, np.array(expected)) < 0.002, stem


def test_detect_goes_on_after_bad_inputs_and_increments_run_folders(tmp_path):
    good = tmp_path / 'good.jpg'
    cv2.imwrite(str(good), scene(160, 224, [(20, 30, 90, 120)]))
    corrupt = tmp_path / 'corrupt.jpg'
    corrupt.write_bytes(b'\xff\xd8\xff\xe0 this is not really a jpeg')
    notes = tmp_path / 'notes.txt'
    notes.write_text('hello')
    truncated = tmp_path / 'truncated.png'
    cv2.imwrite(str(truncated), scene(160, 224, []))
    truncated.write_bytes(truncated.read_bytes()[:200])
    video = tmp_path / 'broken.mp4'
    video.write_bytes(b'\x00\x00\x00\x18ftypmp42 but nothing after')
    r = run_detect(tmp_path / 'missing.jpg', corrupt, notes, truncated, video, good, '--weights', WEIGHTS, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    for name, why in [('missing.jpg', 'no such file'), ('corrupt.jpg', 'cannot decode'), ('broken.mp4', 'cannot decode video'),
                      ('notes.txt', 'not an image or video'), ('truncated.png', 'cannot decode')]:
        assert any(name in line and why in line for line in r.stderr.splitlines()), (name, r.stderr)
    assert 'good.jpg: 480x640' in r.stdout and (tmp_path / 'runs/detect/exp/good.jpg').exists()
    r = run_detect(corrupt, '--weights', WEIGHTS, cwd=tmp_path)
    assert r.returncode == 1 and 'nothing could be processed' in r.stderr
    r = run_detect(tmp_path, '--weights', WEIGHTS, '--img', '250', cwd=tmp_path)  # a folder; the next run folder
    assert r.returncode == 0 and (tmp_path / 'runs/detect/exp3/good.jpg').exists(), r.stderr
    assert 'using 256' in r.stdout and 'good.jpg: 192x256' in r.stdout


def test_detect_video(tmp_path):
    path = tmp_path / 'clip.mp4'
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*'mp4v'), 10, (192, 128))
    for i in range(4):
        writer.write(scene(128, 192, [(10 + 20 * i, 20, 60 + 20 * i, 90)], seed=i))
    writer.release()
    r = run_detect(path, '--weights', WEIGHTS, '--img', '192', '--save-txt', cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert 'video 1/1 (frame 4/4)' in r.stdout
    cap = cv2.VideoCapture(str(tmp_path / 'runs/detect/exp/clip.mp4'))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 4


# ---------------------------------------------------------------------------------------------- data.py

AUG_OFF = dict(hsv_h=0.0, hsv_s=0.0, hsv_v=0.0, degrees=0.0, translate=0.0, scale=0.0, shear=0.0, perspective=0.0,
               flipud=0.0, fliplr=0.0, mosaic=0.0, mixup=0.0, blur=0.0, median_blur=0.0, to_gray=0.0, clahe=0.0,
               crop=0.0, brightness_contrast=0.0, gamma=0.0, jpeg=0.0)
# saturated colours, far from every grey (background, padding) and from each other in every channel
COLOURS = [c for c in __import__('itertools').product((0, 128, 255), repeat=3) if max(c) - min(c) >= 128]


def make_dataset(root, images, size=(160, 160), split='train', ext='.jpg'):
    """images: list of lists of (cls, x1, y1, x2, y2) pixel boxes; writes images/<split> and labels/<split>."""
    root = Path(root)
    (root / 'images' / split).mkdir(parents=True, exist_ok=True)
    (root / 'labels' / split).mkdir(parents=True, exist_ok=True)
    h, w = size
    for k, boxes in enumerate(images):
        rng = np.random.default_rng(k)
        grey = cv2.GaussianBlur(rng.integers(60, 190, (h, w), dtype=np.uint8), (0, 0), 2)
        img = np.repeat(grey[:, :, None], 3, 2)
        for c, x1, y1, x2, y2 in boxes:
            img[y1:y2, x1:x2] = COLOURS[c]
        cv2.imwrite(str(root / 'images' / split / f'im{k}{ext}'), img, [cv2.IMWRITE_JPEG_QUALITY, 100])
        rows = [f'{c} {(x1 + x2) / 2 / w} {(y1 + y2) / 2 / h} {(x2 - x1) / w} {(y2 - y1) / h}' for c, x1, y1, x2, y2 in boxes]
        (root / 'labels' / split / f'im{k}.txt').write_text('\n'.join(rows) + '\n' if rows else '')
    return root


def rectangles_dataset(root):
    """6 images, 3 rectangles each, every rectangle in its own colour = its class (18 classes)."""
    boxes = [[(3 * k, 10, 12, 60, 50), (3 * k + 1, 90, 20, 150, 70), (3 * k + 2, 30 + 5 * k, 95, 110, 150)] for k in range(6)]
    return make_dataset(root, boxes), {3 * k + j: (b[3] - b[1]) * (b[4] - b[2]) for k, bb in enumerate(boxes) for j, b in enumerate(bb)}


def check_labels_frame_rectangles(img, labels, areas, rotated=False):
    """Every label box frames the pixels of its colour: IoU > 0.9, or every edge within 2 px (pixel grid, and
    OpenCV's warps put pixel centres at integers while labels use edges: the original has the same 0.5 px offsets).
    A rotated box clipped by the border is the clipped box of its rotated corners (as in YOLOv5): it must
    contain its pixels. And every rectangle that is still well visible has a label."""
    img = np.ascontiguousarray(img.numpy().transpose(1, 2, 0)[:, :, ::-1]).astype(int)
    h, w = img.shape[:2]
    boxes = support.datasets.xywh2xyxy(labels[:, 2:6].numpy()) * (w, h, w, h)

    def iou(a, b):
        inter = max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))
        return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)

    for c in range(len(areas)):
        mask = (np.abs(img - COLOURS[c]).max(2) < 64).astype(np.uint8)  # nearer the colour than any grey
        mine = boxes[labels[:, 1].numpy() == c]
        for b in mine:
            x1, y1 = max(int(b[0]) - 3, 0), max(int(b[1]) - 3, 0)
            ys, xs = np.nonzero(mask[y1:int(b[3]) + 4, x1:int(b[2]) + 4])
            assert len(xs), f'label of class {c} at {b.round(1)} frames nothing'
            pix = np.array((xs.min() + x1, ys.min() + y1, xs.max() + x1 + 1, ys.max() + y1 + 1))
            if rotated and (b[:2].min() < 0.5 or b[2] > w - 0.5 or b[3] > h - 0.5):
                assert (pix[:2] >= b[:2] - 2).all() and (pix[2:] <= b[2:] + 2).all(), f'{b.round(1)} misses {pix}'
            else:
                assert iou(b, pix) > 0.9 or np.abs(pix - b).max() <= 2, f'label {b.round(1)} vs pixels {pix}, class {c}'
        n, _, stats, _ = cv2.connectedComponentsWithStats(mask)
        for x, y, bw, bh, area in stats[1:]:
            if area >= 0.35 * areas[c] and bw >= 4 and bh >= 4:  # visible enough that YOLOv5's candidate rule keeps it
                assert any(iou(b, (x, y, x + bw, y + bh)) > 0.6 for b in mine), f'visible rectangle of class {c} lost'


@pytest.mark.parametrize('config', [
    dict(mosaic=1.0, degrees=10, translate=0.1, scale=0.5, shear=5, fliplr=0.5, flipud=0.5),
    dict(mosaic=1.0, translate=0.2, scale=0.9, crop=1.0),
    dict(mosaic=0.0, degrees=5, translate=0.1, scale=0.3, perspective=0.0005, fliplr=0.5),
    dict(mosaic=0.0, crop=1.0, flipud=1.0),
    dict()])  # letterbox alone
def test_geometric_augmentations_keep_boxes_on_their_rectangles(tmp_path, config):
    root, areas = rectangles_dataset(tmp_path)
    ds = data.YOLODataset(root, 160, augment=True, hyp=dict(AUG_OFF, **config), nc=18, seed=3)
    n_labels = 0
    for epoch in range(8):
        ds.epoch = epoch
        for i in range(len(ds)):
            img, labels, _, _ = ds[i]
            check_labels_frame_rectangles(img, labels, areas, rotated=bool(config.get('degrees') or config.get('shear')))
            n_labels += len(labels)
    assert n_labels > 8 * 6  # the check saw many boxes


def test_letterbox_of_non_square_images_keeps_boxes(tmp_path):
    root = make_dataset(tmp_path, [[(0, 10, 12, 60, 50), (1, 150, 20, 230, 70)], [(2, 5, 5, 40, 100)]], size=(120, 240))
    ds = data.YOLODataset(root, 160, nc=18, rect=True, batch_size=2, pad=0.5)
    assert ds.batch_shapes.tolist() == [[96, 192]]  # 120x240 -> 80x160, plus half a stride, rounded up to 32
    for i in range(2):
        img, labels, _, shapes = ds[i]
        assert tuple(img.shape) == (3, 96, 192) and shapes[0] == (120, 240)
        check_labels_frame_rectangles(img, labels, {0: 1900, 1: 4000, 2: 3325})


def test_mixup_keeps_the_labels_of_both_images(tmp_path):
    root, _ = rectangles_dataset(tmp_path)
    ds = data.YOLODataset(root, 160, augment=True, hyp=dict(AUG_OFF, mosaic=1.0, mixup=1.0), nc=18, seed=0)
    plain = data.YOLODataset(root, 160, augment=True, hyp=dict(AUG_OFF, mosaic=1.0), nc=18, seed=0)
    img, labels, _, _ = ds[2]
    ref, ref_labels, _, _ = plain[2]
    assert len(labels) > len(ref_labels)  # the second mosaic's labels are added to the first one's
    assert not torch.equal(img, ref)
    r = data.mixup(np.full((4, 4, 3), 200, np.uint8), np.zeros((1, 5)), np.full((4, 4, 3), 100, np.uint8),
                   np.ones((2, 5)), np.random.default_rng(0))
    assert 130 < r[0][0, 0, 0] < 170 and len(r[1]) == 3  # beta(32, 32) mixes close to half and half


def test_photometric_augmentations_change_pixels_not_shape():
    img = scene(96, 128, [(10, 10, 60, 60), (70, 30, 120, 90)])
    rng = np.random.default_rng(0)
    for key in ('blur', 'median_blur', 'to_gray', 'clahe', 'brightness_contrast', 'gamma', 'jpeg'):
        out = data.photometric(img.copy(), rng, dict(AUG_OFF, **{key: 1.0}))
        assert out.shape == img.shape and out.dtype == np.uint8
        assert not np.array_equal(out, img), key
        if key == 'to_gray':
            assert (out[:, :, 0] == out[:, :, 1]).all() and (out[:, :, 1] == out[:, :, 2]).all()
    assert np.array_equal(data.photometric(img.copy(), rng, AUG_OFF), img)
    hsv = data.augment_hsv(img.copy(), rng, 0.015, 0.7, 0.4)  # returned in RGB, the model's order
    assert hsv.shape == img.shape and not np.array_equal(hsv, img[:, :, ::-1])
    assert np.array_equal(data.augment_hsv(img, rng, 0, 0, 0), img[:, :, ::-1])


def test_label_checks(tmp_path, capsys):
    root = make_dataset(tmp_path, [[(0, 10, 10, 50, 50)]] * 13)
    lab = root / 'labels' / 'train'
    (lab / 'im0.txt').write_text('0 0.5 0.5 0.2\n')                              # 4 numbers
    (lab / 'im1.txt').write_text('1 0.5 0.5 0.2 0.2\nx 0.5 0.5 0.2 0.2\n')       # not numbers (2nd row)
    (lab / 'im2.txt').write_text('1 0.5 0.5 0.2\n')                              # 4 numbers
    (lab / 'im3.txt').write_text('1 1.004 0.5 0.2 0.2\n1 1.5 0.5 0.2 0.2\n')     # within tolerance; out of [0, 1]
    (lab / 'im4.txt').write_text('1 0.5 0.5 0.0 0.2\n')                            # zero width
    (lab / 'im5.txt').write_text('2 0.5 0.5 0.2 0.2\n2 0.5 0.5 0.2 0.2\n3 0.1 0.1 0.1 0.1\n')  # a duplicate
    (lab / 'im6.txt').unlink()                                                      # missing: background
    (lab / 'im7.txt').write_text('')                                                # empty: background
    (root / 'images' / 'train' / 'im8.jpg').write_bytes(b'\xff\xd8\xff\xe0garbage')  # corrupt image
    (lab / 'im9.txt').write_text('1 1.004 0.5 0.2 0.2\n4 0.5 -0.003 0.2 0.2\n')  # clipped, said so
    (lab / 'im10.txt').write_text('1 0.1 0.1 0.3 0.1 0.2\n')                       # 5 coordinates
    (lab / 'im11.txt').write_text('1 0.5 nan 0.2 0.2\n')                           # nan passes every comparison
    (lab / 'im12.txt').write_text('1 0.5\n')
    img = root / 'images' / 'train' / 'trunc.jpg'  # a JPEG without its end marker that still decodes: kept
    ok, buf = cv2.imencode('.jpg', scene(64, 64, []))
    img.write_bytes(buf.tobytes()[:-2])
    files, sizes, labels = support.datasets.load_labels(support.datasets.find_images(root), nc=5)
    err = capsys.readouterr()
    by_name = {Path(f).stem: lb for f, lb in zip(files, labels)}
    # as in the original, an image with a malformed label row is left out whole: its objects must not be background
    assert sorted(by_name) == ['im5', 'im6', 'im7', 'im9', 'trunc']
    assert [len(by_name[k]) for k in ('im5', 'im6', 'im7', 'im9')] == [2, 0, 0, 2]
    assert by_name['im9'][0, 1] == 1.0 and by_name['im9'][1, 2] == 0.0  # clipped
    for expected in ['im0.txt:1: 4 numbers', 'im1.txt:2: not numbers', 'im2.txt:1: 4 numbers',
                     'im3.txt:2: coordinates not normalized', 'im4.txt:1: width and height', 'im10.txt:1: 6 numbers',
                     'im5.txt: 1 duplicate rows removed', 'im8.jpg: ignoring corrupt image/label',
                     'im9.txt:1: 1.004 clipped to [0, 1]', 'im9.txt:2: -0.003 clipped',
                     'trunc.jpg: truncated JPEG, it decodes and is kept', 'im11.txt:1: coordinates not normalized',
                     'im12.txt:1: 2 numbers']:
        assert expected in err.err, expected
    assert 'im0.jpg: ignoring corrupt image/label' in err.err
    assert '5 images, 3 backgrounds, 9 corrupt, 4 instances' in err.out
    (lab / 'im5.txt').write_text('7 0.5 0.5 0.2 0.2\n')
    with pytest.raises(ValueError, match=r'im5.txt: class 7 is out of range.*5 classes'):
        support.datasets.load_labels(support.datasets.find_images(root), nc=5)
    for row, shown in (('1.5', '1.5'), ('inf', 'inf'), ('-1', '-1'), ('nan', 'nan')):  # not class indices: one rule
        (lab / 'im5.txt').write_text(f'{row} 0.5 0.5 0.2 0.2\n')
        with pytest.raises(ValueError, match=rf'im5.txt:1: class {shown} is out of range.*5 classes'):
            support.datasets.load_labels(support.datasets.find_images(root), nc=5)


def test_polygon_rows_become_the_boxes_around_their_points(tmp_path):
    lab = tmp_path / 'a.txt'
    lab.write_text('3 0.1 0.2 0.5 0.2 0.3 0.6\n1 0.5 0.5 0.2 0.4\n0 0.9 0.9 0.95 0.8 0.7 0.85 0.8 1.0\n')  # mixed
    labels, msgs = support.datasets.read_labels(lab)
    np.testing.assert_allclose(labels, [[3, 0.3, 0.4, 0.4, 0.4], [1, 0.5, 0.5, 0.2, 0.4], [0, 0.825, 0.9, 0.25, 0.2]],
                               atol=1e-6)
    for bad in ('3 0.1 0.2 0.5 0.2 0.3 0.6 0.7', '3 0.1 0.2', '3 0.1 0.2 0.5 0.2 0.5 0.2 0.3 0.6 0.9'):
        lab.write_text(bad + '\n')  # an odd number of coordinates, or a single point: a bad row
        with pytest.raises(ValueError, match='a.txt:1: .* numbers'):
            support.datasets.read_labels(lab)


def test_label_cache_is_reused_and_rebuilt_on_change(tmp_path, capsys):
    root = make_dataset(tmp_path, [[(0, 10, 10, 50, 50)], [(1, 20, 20, 80, 90)]])
    files = support.datasets.find_images(root)
    first = support.datasets.load_labels(files, nc=5)
    cache = root / 'labels' / 'train.cache'
    out = capsys.readouterr().out  # (the scan runs in child processes): its progress line, then the summary
    assert cache.exists() and out.startswith('Scanning') and out.splitlines()[1].startswith('Scanned')
    second = support.datasets.load_labels(files, nc=5)
    assert capsys.readouterr().out.startswith('Cached') and all(np.array_equal(a, b) for a, b in zip(first[2], second[2]))
    (root / 'labels' / 'train' / 'im1.txt').write_text('2 0.5 0.5 0.25 0.25\n3 0.2 0.2 0.1 0.1\n')
    third = support.datasets.load_labels(files, nc=5)
    assert capsys.readouterr().out.splitlines()[1].startswith('Scanned') and third[2][1][:, 0].tolist() == [2, 3]
    cache.write_bytes(b'garbage')  # unreadable cache: scanned again
    assert len(support.datasets.load_labels(files, nc=5)[2][1]) == 2 and '\nScanned ' in capsys.readouterr().out


def test_coco128_scan():
    files, sizes, labels = support.datasets.load_labels(support.datasets.find_images(shared(COCO128)), nc=80)
    assert len(files) == 128 and sum(len(x) == 0 for x in labels) == 2 and sum(len(x) for x in labels) == 929


def test_loader_is_deterministic_under_a_seed(tmp_path):
    root, _ = rectangles_dataset(tmp_path)
    hyp = dict(AUG_OFF, mosaic=1.0, degrees=10, scale=0.5, fliplr=0.5, hsv_h=0.015, hsv_s=0.7, hsv_v=0.4, blur=0.5)
    batches = []
    for workers in (0, 2, 0):
        ds = data.YOLODataset(root, 160, augment=True, hyp=hyp, nc=18, seed=5)
        loader = data.create_dataloader(ds, 4, workers, shuffle=True)
        data.set_epoch(loader, 1)
        batches.append(next(iter(loader)))
    for b in batches[1:]:
        assert torch.equal(b[0], batches[0][0]) and torch.equal(b[1], batches[0][1]) and b[2] == batches[0][2]
    data.set_epoch(loader, 2)
    assert not torch.equal(next(iter(loader))[0], batches[0][0])  # a new epoch, new shuffle and augmentation
    ds = data.YOLODataset(root, 160, augment=True, hyp=hyp, nc=18, seed=5)
    persistent = data.create_dataloader(ds, 4, 2, shuffle=True)  # workers that live on: the epoch must reach them
    for epoch in (1, 2):
        data.set_epoch(persistent, epoch)
        batch = next(iter(persistent))
    assert persistent.persistent_workers and torch.equal(batch[0], next(iter(loader))[0])
    other = data.YOLODataset(root, 160, augment=True, hyp=hyp, nc=18, seed=6)
    assert not torch.equal(other[0][0], data.YOLODataset(root, 160, augment=True, hyp=hyp, nc=18, seed=5)[0][0])


@pytest.mark.parametrize('mosaic', [1.0, 0.0])
def test_training_skips_an_image_that_stops_decoding(tmp_path, capsys, mosaic):
    root, areas = rectangles_dataset(tmp_path)
    ds = data.YOLODataset(root, 160, augment=True, hyp=dict(AUG_OFF, mosaic=mosaic), nc=18)
    (root / 'images' / 'train' / 'im0.jpg').write_bytes(b'broken after the scan')
    for i in range(len(ds)):
        img, labels, path, _ = ds[i]
        assert img.shape == (3, 160, 160) and len(labels) and (mosaic or not path.endswith('im0.jpg'))
        check_labels_frame_rectangles(img, labels, areas)  # the labels are those of the image put in its place
    assert 'im0.jpg: cannot decode image, skipped' in capsys.readouterr().err


def test_ram_cache_gives_the_same_samples(tmp_path):
    root, _ = rectangles_dataset(tmp_path)
    hyp = dict(AUG_OFF, mosaic=1.0, scale=0.5)
    disk = data.YOLODataset(root, 128, augment=True, hyp=hyp, nc=18)
    ram = data.YOLODataset(root, 128, augment=True, hyp=hyp, nc=18, cache='ram')
    assert all(x is not None for x in ram.decoded)
    assert torch.equal(disk[1][0], ram[1][0]) and torch.equal(disk[1][1], ram[1][1])


def test_data_py_writes_a_batch_picture(tmp_path):
    root, _ = rectangles_dataset(tmp_path)
    (root / 'names.txt').write_text('\n'.join(f'c{i}' for i in range(18)))
    r = subprocess.run([sys.executable, str(ROOT / 'data.py'), str(root), '--img', '160', '--batch', '4',
                        '--names', str(root / 'names.txt'), '--out', str(tmp_path / 'b.jpg')],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert cv2.imread(str(tmp_path / 'b.jpg')).shape[:2] == (320, 320)


# ---------------------------------------------------------------------------------------------- loss.py

import loss as L  # noqa: E402
import train as T  # noqa: E402

VAL_METRICS = ['metrics/precision', 'metrics/recall', 'metrics/mAP_0.5', 'metrics/mAP_0.5:0.95', 'val/box_loss',
               'val/obj_loss', 'val/cls_loss']
LOSS_HYP = dict(box=0.05, cls=0.5, cls_pw=1.0, obj=1.0, obj_pw=1.0, anchor_t=4.0, fl_gamma=0.0, label_smoothing=0.0)


def fixed_loss_inputs(nc, b=2, h=128, w=192):
    """Predictions and targets from sines: the same numbers on any machine, no random generator involved."""
    preds = []
    for i, s in enumerate((8, 16, 32)):
        n = b * 3 * (h // s) * (w // s) * (5 + nc)
        preds.append((torch.sin(torch.arange(n, dtype=torch.float64) * (0.37 + i)) * 3).float().view(b, 3, h // s, w // s, 5 + nc))
    k = torch.arange(14, dtype=torch.float64)
    wh = 0.02 + 0.5 * (torch.sin(k * 1.3) * 0.5 + 0.5)
    xy = wh / 2 + (1 - wh) * (torch.cos(k * 2.1) * 0.5 + 0.5)
    return preds, torch.stack((k % b, k % nc, xy, xy.flip(0), wh, wh.flip(0)), 1).float()


@pytest.mark.parametrize('nc,extra,expected_loss,expected_items', [  # computed by the original YOLOv5 v7.0 ComputeLoss
    (3, {}, 16.016685, [0.146722, 6.116889, 1.744732]),
    (80, dict(label_smoothing=0.1), 16.044979, [0.142691, 6.168664, 1.711134]),
    (1, dict(fl_gamma=1.5), 7.42766, [0.149526, 3.564304, 0.0]),
    (5, dict(anchor_t=2.5, cls_pw=2.0), 16.626095, [0.150465, 6.205159, 1.957424])])
def test_loss_matches_the_original(nc, extra, expected_loss, expected_items):
    preds, targets = fixed_loss_inputs(nc)
    # the original's ComputeLoss takes the gains as they are; YOLOLoss scales cls by nc / 80 (and the rest by 1 for
    # 3 levels at 640 pixels): give it the gain that scales to the original's
    hyp = dict(LOSS_HYP, cls=LOSS_HYP['cls'] * 80 / nc, **extra)
    loss, items = L.YOLOLoss(M.YOLOv5('n', nc=nc), hyp)(preds, targets)
    assert abs(loss.item() - expected_loss) < 1e-4
    np.testing.assert_allclose(torch.stack(list(items.values())).numpy(), expected_items, atol=1e-5)


def test_ciou_known_values():
    a = torch.tensor([[1.0, 1.0, 2.0, 2.0]])
    assert abs(L.bbox_ciou(a, a).item() - 1) < 1e-6
    # shifted by 1 along x: IoU 2/6, enclosing box 3x2 (diagonal^2 13), centre distance^2 1, same aspect
    assert abs(L.bbox_ciou(a, torch.tensor([[2.0, 1.0, 2.0, 2.0]])).item() - (1 / 3 - 1 / 13)) < 1e-6
    # same centre, 2x4 vs 2x2: IoU 0.5, no distance term, aspect term v = 4/pi^2 (atan 1/2 - atan 1)^2
    v = 4 / np.pi ** 2 * (np.arctan(0.5) - np.arctan(1.0)) ** 2
    assert abs(L.bbox_ciou(a, torch.tensor([[1.0, 1.0, 2.0, 4.0]])).item() - (0.5 - v * v / (v + 0.5))) < 1e-6


def test_targets_go_to_their_cell_and_the_two_nearest_neighbours():
    net = M.YOLOv5('n', nc=2)
    preds = [torch.zeros(1, 3, 8 // 2 ** i, 8 // 2 ** i, 7) for i in range(3)]  # a 64x64 image: grids 8, 4, 2
    # centre at (x 3.3, y 5.8) of the P3 grid: left neighbour (x%1 < 0.5) and lower neighbour (y%1 > 0.5)
    targets = torch.tensor([[0, 1, 3.3 / 8, 5.8 / 8, 14 / 64, 20 / 64]])
    tcls, tbox, indices, anchors = L.YOLOLoss(net, LOSS_HYP).build_targets(preds, targets)
    b, a, gj, gi = indices[0]
    # P3 anchors 10x13, 16x30, 33x23 px -> all three within a wh ratio of 4 of a 14x20 box
    assert sorted(set(zip(gi.tolist(), gj.tolist()))) == [(2, 5), (3, 5), (3, 6)]
    assert sorted(set(a.tolist())) == [0, 1, 2] and (tcls[0] == 1).all()
    # the box is given relative to the assigned cell: offsets in [-0.5, 1.5]
    assert tbox[0][:, :2].min() >= -0.5 and tbox[0][:, :2].max() <= 1.5
    # P5 anchors (116x90 ...) are more than 4x the box: no match there
    assert len(indices[2][0]) == 0


# ---------------------------------------------------------------------------------------------- train.py

def run_train(*args, cwd, torchrun=False, timeout=600):
    cmd = ([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2'] if torchrun
           else [sys.executable]) + [str(ROOT / 'train.py'), *map(str, args)]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)


# The original YOLOv5's confusion matrix of yolov5n on COCO128 at 640, batch 32 (its v7.0 release, whose mAP differs
# from the current original's in the third digit): the diagonal where not 0, the background row and column
CONFUSION_DIAGONAL = {0: 164, 1: 2, 2: 8, 3: 3, 4: 3, 5: 5, 6: 2, 7: 1, 8: 2, 9: 2, 11: 1, 13: 4, 14: 13, 15: 3, 16: 3,
                      17: 2, 20: 13, 21: 1, 22: 4, 23: 8, 24: 1, 25: 9, 26: 1, 27: 3, 28: 3, 29: 4, 31: 4, 32: 3, 33: 5,
                      35: 3, 36: 3, 38: 2, 39: 4, 40: 10, 41: 9, 42: 1, 43: 8, 44: 3, 45: 14, 50: 2, 51: 5, 52: 1,
                      53: 5, 54: 12, 55: 4, 56: 12, 57: 1, 58: 6, 60: 4, 61: 1, 62: 2, 65: 4, 68: 3, 69: 2, 71: 1,
                      72: 3, 73: 3, 74: 8, 75: 2, 77: 6}
CONFUSION_BACKGROUND_ROW = [86, 4, 38, 1, 3, 2, 1, 8, 4, 12, 0, 1, 0, 5, 3, 1, 4, 0, 0, 0, 3, 0, 0, 1, 4, 9, 18, 4, 1, 1, 1,
                            1, 3, 5, 4, 4, 2, 0, 5, 13, 6, 26, 4, 7, 19, 12, 1, 0, 0, 4, 9, 19, 1, 0, 2, 0, 23, 4, 7, 3,
                            9, 1, 0, 2, 2, 4, 0, 7, 0, 3, 0, 5, 2, 26, 1, 0, 1, 15, 0, 5, 0]
CONFUSION_BACKGROUND_COLUMN = [45, 1, 4, 1, 0, 2, 1, 2, 2, 2, 0, 0, 0, 0, 1, 0, 1, 1, 1, 1, 1, 0, 0, 1, 2, 3, 0, 2, 1, 1, 1,
                               1, 2, 2, 1, 0, 0, 0, 2, 6, 3, 1, 0, 3, 0, 5, 0, 0, 1, 0, 2, 3, 0, 3, 5, 1, 19, 1, 3, 0, 2,
                               0, 0, 0, 0, 1, 0, 1, 1, 3, 0, 0, 0, 0, 1, 3, 0, 2, 0, 0, 0]


@pytest.mark.parametrize('img,batch,expected', [(640, 32, [0.626, 0.481, 0.545, 0.350]),  # ../shared/expected/
                                                 (320, 16, [0.585, 0.382, 0.458, 0.290])])  # coco128_yolov5n_640_val.txt
def test_val_only_matches_the_original(tmp_path, img, batch, expected):
    r = run_train('--val-only', '--weights', shared(WEIGHTS), '--data', shared(COCO128), '--img', img, '--batch', batch,
                  cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    row = next(line for line in r.stdout.splitlines() if line.split()[:1] == ['all']).split()
    assert row[1:3] == ['128', '929']
    assert all(abs(float(v) - e) <= 0.005 for v, e in zip(row[3:], expected)), row
    assert 'Speed:' in r.stdout and 'Results saved to runs/val/exp' in r.stdout
    if img == 640:  # the confusion matrix: as the original's, to a few counts out of 1084
        m = np.loadtxt(tmp_path / 'runs/val/exp/confusion_matrix.csv', delimiter=',')
        diagonal = np.array([CONFUSION_DIAGONAL.get(i, 0) for i in range(80)])
        assert m.shape == (81, 81) and abs(m.sum() - 1084) <= 6 and abs(m[0, 0] - 164) <= 1
        assert np.abs(np.diag(m)[:80] - diagonal).sum() <= 8 and np.abs(np.diag(m)[:80] - diagonal).max() <= 2
        assert np.abs(m[80] - CONFUSION_BACKGROUND_ROW).sum() <= 8 and np.abs(m[80] - CONFUSION_BACKGROUND_ROW).max() <= 2
        assert np.abs(m[:, 80] - CONFUSION_BACKGROUND_COLUMN).sum() <= 8
        for name, size in (('confusion_matrix.png', 1000), ('PR_curve.png', 800), ('F1_curve.png', 800)):
            picture = cv2.imread(str(tmp_path / 'runs/val/exp' / name))
            assert picture is not None and min(picture.shape[:2]) >= size and picture.std() > 10, name


def make_shapes_dataset(root, n_train=128, n_val=32, size=160, seed=0):
    """Rectangles, discs and triangles (one hue per class, jittered) on textured backgrounds, YOLO layout."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    for split, n in (('train', n_train), ('val', n_val)):
        (root / 'images' / split).mkdir(parents=True, exist_ok=True)
        (root / 'labels' / split).mkdir(parents=True, exist_ok=True)
        for k in range(n):
            img = cv2.GaussianBlur(rng.integers(40, 215, (size, size, 3), dtype=np.uint8), (0, 0), 2)
            rows = []
            for _ in range(rng.integers(1, 4)):
                cls = int(rng.integers(0, 3))
                w, h = rng.integers(size // 8, size // 3, 2)
                x1, y1 = rng.integers(0, size - w), rng.integers(0, size - h)
                color = tuple(int(c) for c in np.clip(np.roll([230, 40, 40], cls) + rng.integers(-25, 26, 3), 0, 255))
                if cls == 0:
                    cv2.rectangle(img, (int(x1), int(y1)), (int(x1 + w - 1), int(y1 + h - 1)), color, -1)
                elif cls == 1:
                    cv2.ellipse(img, (int(x1 + w / 2), int(y1 + h / 2)), (int(w / 2), int(h / 2)), 0, 0, 360, color, -1)
                else:
                    cv2.fillPoly(img, [np.array([[x1 + w / 2, y1], [x1, y1 + h - 1], [x1 + w - 1, y1 + h - 1]], np.int32)], color)
                rows.append(f'{cls} {(x1 + w / 2) / size:.6f} {(y1 + h / 2) / size:.6f} {w / size:.6f} {h / size:.6f}')
            cv2.imwrite(str(root / 'images' / split / f'{k:04d}.jpg'), img)
            (root / 'labels' / split / f'{k:04d}.txt').write_text('\n'.join(rows) + '\n')
    (root / 'names.txt').write_text('rectangle\ndisc\ntriangle\n')
    return root


def last_results(run_dir):
    rows = list(__import__('csv').reader(open(run_dir / 'results.csv')))
    return [dict(zip([h.strip() for h in rows[0]], map(float, r))) for r in rows[1:]]


def test_training_from_scratch_learns_shapes(tmp_path):
    root = make_shapes_dataset(tmp_path / 'shapes')
    r = run_train('--weights', '', '--cfg', 'n', '--data', root, '--names', root / 'names.txt', '--img', 160,
                  '--batch', 16, '--epochs', 30, '--noval', '--hyp', 'nbs=16', 'lr0=0.02', cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    final = last_results(tmp_path / 'runs/train/exp')[-1]
    assert final['metrics/mAP_0.5'] >= 0.8, final
    # and detect.py uses the checkpoint: the classes come from it
    r = run_detect(root / 'images/val/0000.jpg', '--weights', tmp_path / 'runs/train/exp/weights/best.pt', '--img', 160, cwd=tmp_path)
    assert r.returncode == 0 and any(n in r.stdout for n in ('rectangle', 'disc', 'triangle')), r.stdout + r.stderr


def test_fine_tune_coco128_matches_the_original(tmp_path):
    r = run_train('--weights', shared(WEIGHTS), '--data', shared(COCO128), '--img', 320, '--batch', 16, '--epochs', 3,
                  cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'Transferred 349/349 items' in r.stdout
    rows = last_results(tmp_path / 'runs/train/exp')
    assert [row['epoch'] for row in rows] == [0, 1, 2]
    assert abs(rows[-1]['metrics/mAP_0.5'] - 0.42) <= 0.03 and abs(rows[-1]['metrics/mAP_0.5:0.95'] - 0.24) <= 0.03, rows[-1]
    assert [round(rows[0][k], 6) for k in ('x/lr0', 'x/lr1', 'x/lr2')] == [0.0937, 0.0007, 0.0007]  # the original's warmup
    for name in ('last.pt', 'best.pt'):  # stripped as the original: no optimizer, the EMA's weights in fp16
        ckpt = torch.load(tmp_path / 'runs/train/exp/weights' / name, weights_only=True)
        assert {'model', 'epoch', 'best_fitness', 'hyp', 'config', 'opt'} <= set(ckpt)
        assert {'names', 'scale', 'anchors'} <= set(ckpt['config'])
        assert not {'optimizer', 'ema'} & set(ckpt) and ckpt['model']['model.0.conv.weight'].dtype == torch.float16
    # the run ends with best.pt validated again, fused, per class, in fp32 (the epochs validate in bf16 where the
    # CPU has it): the mAP is that of its epoch
    final = r.stdout[r.stdout.index('Validating '):]
    assert '  person  ' in final and 'Results saved to' in final
    best_row = next(line for line in final.splitlines() if line.split()[:1] == ['all']).split()
    assert abs(float(best_row[6]) - rows[-1]['metrics/mAP_0.5:0.95']) <= 0.005, (best_row, rows[-1])
    r = run_train('--val-only', '--weights', tmp_path / 'runs/train/exp/weights/best.pt', '--data', COCO128, '--img', 320,
                  '--batch', 32, cwd=tmp_path)
    assert next(line for line in r.stdout.splitlines() if line.split()[:1] == ['all']).split() == best_row
    for picture in ('train_batch0.jpg', 'val_batch0_pred.jpg', 'labels.jpg', 'results.png', 'confusion_matrix.png',
                    'PR_curve.png', 'F1_curve.png'):
        img = cv2.imread(str(tmp_path / 'runs/train/exp' / picture))
        assert img is not None and min(img.shape[:2]) >= 600 and img.std() > 10, picture
    assert np.loadtxt(tmp_path / 'runs/train/exp/confusion_matrix.csv', delimiter=',').shape == (81, 81)


def tiny_args(root, project, *extra):
    return T.parse_args(['--weights', '', '--cfg', 'n', '--data', str(root), '--names', str(root / 'names.txt'),
                         '--img', '128', '--batch', '8', '--epochs', '3', '--workers', '0', '--project', str(project),
                         '--hyp', 'nbs=8', *extra])


def interrupted_at_epoch_1(monkeypatch, args):
    """A training run stopped by Ctrl-C as epoch 1 begins."""
    real = T.set_epoch

    def interrupt_at_epoch_1(loader, epoch):
        if epoch == 1:
            raise KeyboardInterrupt
        real(loader, epoch)
    monkeypatch.setattr(T, 'set_epoch', interrupt_at_epoch_1)
    with pytest.raises(SystemExit):
        T.Trainer(args).fit()
    monkeypatch.setattr(T, 'set_epoch', real)


def test_resume_after_an_interruption_ends_like_an_uninterrupted_run(tmp_path, monkeypatch):
    root = make_shapes_dataset(tmp_path / 'shapes', n_train=24, n_val=8, size=128)
    real_finish = T.Trainer.finish

    def keep_unstripped(self):  # a copy of last.pt before the end of the run strips it
        __import__('shutil').copy(self.weights_dir / 'last.pt', self.weights_dir / 'unstripped.pt')
        return real_finish(self)
    monkeypatch.setattr(T.Trainer, 'finish', keep_unstripped)
    full = T.Trainer(tiny_args(root, tmp_path / 'full', '--freeze', '3')).fit()  # frozen layers stay so on resume
    interrupted_at_epoch_1(monkeypatch, tiny_args(root, tmp_path / 'cut', '--freeze', '3'))
    cut_dir = tmp_path / 'cut' / 'exp'
    assert torch.load(cut_dir / 'weights/last.pt', weights_only=True)['epoch'] == 0
    T.Trainer(T.parse_args(['--resume', str(cut_dir / 'weights/last.pt'), '--workers', '0'])).fit()
    assert [r['epoch'] for r in last_results(cut_dir)] == [0, 1, 2]
    a = torch.load(full / 'weights/unstripped.pt', weights_only=True)
    b = torch.load(cut_dir / 'weights/unstripped.pt', weights_only=True)
    for key in ('model', 'ema'):
        for k in a[key]:
            assert torch.equal(a[key][k], b[key][k]), (key, k)
    assert a['updates'] == b['updates'] and a['epoch'] == b['epoch'] == 2
    with pytest.raises(SystemExit, match='finished all 3 epochs: nothing to resume'):
        T.Trainer(T.parse_args(['--resume', str(cut_dir / 'weights/last.pt')])).fit()


def test_ddp_on_two_cpu_processes(tmp_path):
    root = make_shapes_dataset(tmp_path / 'shapes', n_train=16, n_val=8, size=128)
    r = run_train('--weights', '', '--cfg', 'n', '--data', root, '--names', root / 'names.txt', '--img', 128,
                  '--batch', 8, '--epochs', 2, '--device', 'cpu', '--workers', 1, cwd=tmp_path, torchrun=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert '2 process(es)' in r.stdout and r.stdout.count('Transferred') == 0
    assert [row['epoch'] for row in last_results(tmp_path / 'runs/train/exp')] == [0, 1]
    ckpt = torch.load(tmp_path / 'runs/train/exp/weights/last.pt', weights_only=True)
    assert ckpt['epoch'] == 1 and not any(k.startswith('module.') for k in ckpt['model'])
    assert not (tmp_path / 'runs/train/exp2').exists()  # only rank 0 makes the run folder


def test_training_refuses_bad_datasets_with_a_clear_message(tmp_path):
    empty = make_dataset(tmp_path / 'empty', [[], []])
    r = run_train('--weights', '', '--data', empty, '--img', 128, '--epochs', 1, cwd=tmp_path)
    assert r.returncode != 0 and 'no labels found' in r.stderr
    wrong = make_dataset(tmp_path / 'wrong', [[(7, 10, 10, 50, 50)]])
    (wrong / 'names.txt').write_text('a\nb\n')
    r = run_train('--weights', '', '--data', wrong, '--names', wrong / 'names.txt', '--img', 128, '--epochs', 1, cwd=tmp_path)
    assert r.returncode != 0 and 'im0.txt: class 7 is out of range' in r.stderr and '--names' in r.stderr
    r = run_train('--weights', '', '--data', tmp_path / 'mine.yaml', cwd=tmp_path)
    assert r.returncode != 0 and 'mine.yaml: no such file (known without one: coco128, coco)' in r.stderr
    r = run_train('--weights', '', '--data', wrong, '--hyp', 'lr9=1', cwd=tmp_path)
    assert r.returncode != 0 and 'unknown key' in r.stderr


def test_autoanchor_evolves_anchors_for_unusual_boxes(tmp_path, capsys):
    # tall thin boxes the COCO anchors cannot reach within a ratio of 4
    boxes = [[(0, 10 + 12 * j, 5, 13 + j + 12 * j, 120 + 10 * k) for j in range(4)] for k in range(4)]
    ds = data.YOLODataset(make_dataset(tmp_path, boxes), 160, nc=18)
    net = M.YOLOv5('n', nc=18)
    before = net.detect.anchors.clone()
    T.check_anchors(ds, net, 4.0, 160)
    out = capsys.readouterr().out
    assert 'poor fit' in out and 'new anchors saved' in out
    assert not torch.equal(before, net.detect.anchors)
    wh = torch.tensor(T.label_wh(ds, 160))
    assert T.anchor_metric((net.detect.anchors * net.detect.stride.view(-1, 1, 1)).view(-1, 2), wh, 4.0)[1] > 0.98


def test_map_of_perfect_and_of_shifted_predictions():
    labels = torch.tensor([[0, 10, 10, 50, 50], [1, 60, 60, 100, 120.0]])
    iouv = torch.linspace(0.5, 0.95, 10)
    perfect = torch.tensor([[10, 10, 50, 50, 0.9, 0], [60, 60, 100, 120, 0.8, 1.0]])
    assert T.match_predictions(perfect, labels[:, 0], labels[:, 1:], iouv).all()
    shifted = perfect.clone()
    shifted[0, [0, 2]] += 8  # IoU 32/48 = 0.667: a true positive up to the 0.65 threshold only
    correct = T.match_predictions(shifted, labels[:, 0], labels[:, 1:], iouv)
    assert correct[0].tolist() == [True] * 4 + [False] * 6 and correct[1].all()
    p, r, ap, classes, n, curves = T.ap_per_class(correct, shifted[:, 4].numpy(), shifted[:, 5].numpy(), labels[:, 0].numpy())
    # YOLOv5's 101-point envelope gives a perfect class 0.995, not 1 (it ends at recall 1 with precision 0)
    assert classes.tolist() == [0, 1] and abs(ap[1].mean() - 0.995) < 1e-9 and abs(ap[0].mean() - 0.398) < 1e-3
    assert curves['pr'].shape == curves['f1'].shape == (2, 1000) and curves['pr'][1, :999].min() == 1  # class 1: perfect


# ---------------------------------------------------------------------------------------------- the layers

LAYERS = ['support', 'data', 'model', 'loss', 'train', 'detect']  # bottom-up; train and detect are siblings on top


def copy_project(repo):
    """The scripts and the support folder, copied into repo (a folder of the tests')."""
    for f in ('data.py', 'model.py', 'loss.py', 'export.py', 'train.py', 'detect.py'):
        (repo / f).write_text((ROOT / f).read_text())
    shutil.copytree(ROOT / 'support', repo / 'support', ignore=shutil.ignore_patterns('__pycache__'))


def test_each_file_imports_only_files_below_it():
    import ast
    for path in sorted((ROOT / 'support').glob('*.py')):  # the support code imports no stage
        tree = ast.parse(path.read_text())
        imported = {n.module.split('.')[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        imported |= {a.name.split('.')[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert not imported & set(LAYERS[1:]) and 'export' not in imported and 'hubconf' not in imported, path
    for i, name in enumerate(LAYERS[1:], 1):
        allowed = set(LAYERS[:i]) - ({'train'} if name == 'detect' else set())
        tree = ast.parse((ROOT / f'{name}.py').read_text())
        imported = {a.name.split('.')[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module.split('.')[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert imported & set(LAYERS) <= allowed, f'{name}.py imports {sorted(imported & set(LAYERS) - allowed)}'
        r = subprocess.run([sys.executable, '-c', f'import sys, {name}; print(sorted(set(sys.modules) & {set(LAYERS)}))'],
                           cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and set(eval(r.stdout)) <= allowed | {name}, (name, r.stdout, r.stderr)


def test_an_edited_block_still_fine_tunes_from_the_official_weights(tmp_path, monkeypatch, capsys):
    class C3Plus(M.C3):  # what a user might try: one more conv after a C3
        def __init__(self, c_in, c_out, n=1, shortcut=True):
            super().__init__(c_in, c_out, n, shortcut)
            self.extra = M.Conv(c_out, c_out, 3)

        def forward(self, x):
            return self.extra(super().forward(x))

    class Edited(M.YOLOv5):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            old = self.model[8]
            self.model[8] = C3Plus(old.cv1.conv.in_channels, old.cv3.conv.out_channels, len(old.m))

    root = make_shapes_dataset(tmp_path / 'shapes', n_train=8, n_val=4, size=96)
    monkeypatch.setattr(T, 'YOLOv5', Edited)
    args = T.parse_args(['--weights', str(shared(WEIGHTS)), '--data', str(root), '--img', '96', '--batch', '4',
                         '--epochs', '1', '--workers', '0', '--project', str(tmp_path / 'runs'), '--noautoanchor'])
    run = T.Trainer(args).fit()
    out = capsys.readouterr().out
    assert 'Transferred 349/355 items' in out  # all but the 6 tensors of the new conv (weight, BN)
    assert last_results(run)[0]['epoch'] == 0 and (run / 'weights/last.pt').exists()
    monkeypatch.undo()
    model = T.build_model(T.parse_args(['--cfg', 's', '--weights', str(WEIGHTS)]))  # --cfg wins over the weights' scale
    assert model.scale == M.SCALES['s'] and 'Transferred ' in capsys.readouterr().out


def scripted_validate(fitnesses):
    """A stand-in for T.validate whose mAP50-95 follows a script: fitness without the cost of validating."""
    values = iter(fitnesses)
    return lambda *args, **kwargs: dict(dict.fromkeys(VAL_METRICS, 0.0), **{'metrics/mAP_0.5:0.95': next(values, 0.0)})


def test_learning_rate_follows_the_originals_schedule(tmp_path, monkeypatch):
    # 101 images at batch 1: the 100 warmup iterations (the original's minimum) end within epoch 0
    root = make_shapes_dataset(tmp_path / 'shapes', n_train=101, n_val=2, size=64)
    monkeypatch.setattr(T, 'validate', scripted_validate([0.1] * 5))
    run = T.Trainer(T.parse_args(['--weights', '', '--data', str(root), '--names', str(root / 'names.txt'), '--img', '64',
                                '--batch', '1', '--epochs', '4', '--workers', '0', '--project', str(tmp_path / 'runs'),
                                '--noautoanchor', '--hyp', 'warmup_epochs=0', 'mosaic=0'])).fit()
    # the original's LambdaLR steps at the end of each epoch: epoch e trains at lr0 * lf(e - 1), never lf(3)
    assert [round(r['x/lr1'], 6) for r in last_results(run)] == [0.01, 0.01, 0.007525, 0.00505]
    assert [round(r['x/lr0'], 6) for r in last_results(run)] == [0.01, 0.01, 0.007525, 0.00505]


@pytest.mark.parametrize('patience,fitnesses,epochs_run', [
    (0, [0.5, 0.1, 0.1, 0.1, 0.1], 5),   # --patience 0: no early stopping
    (2, [0.5, 0.4, 0.3, 0.2, 0.1], 3),   # best at epoch 0, stops 2 epochs later
    (1, [0.5, 0.5, 0.5, 0.5, 0.5], 5),   # a fitness equal to the best counts as an improvement, as in the original
    (2, [0.1, 0.3, 0.2, 0.2, 0.1], 4)])  # best at epoch 1
def test_early_stopping(tmp_path, monkeypatch, patience, fitnesses, epochs_run):
    root = make_shapes_dataset(tmp_path / 'shapes', n_train=8, n_val=2, size=64)
    monkeypatch.setattr(T, 'validate', scripted_validate(fitnesses))
    run = T.Trainer(T.parse_args(['--weights', '', '--data', str(root), '--names', str(root / 'names.txt'), '--img', '64',
                                '--batch', '4', '--epochs', '5', '--workers', '0', '--project', str(tmp_path / 'runs'),
                                '--noautoanchor', '--patience', str(patience)])).fit()
    assert [r['epoch'] for r in last_results(run)] == list(range(epochs_run))
    assert torch.load(run / 'weights/last.pt', weights_only=True)['epoch'] == epochs_run - 1


def test_brightness_contrast_never_raises_a_dark_pixel():
    img = np.zeros((8, 8, 3), np.uint8)
    img[4:] = 200
    blacks = []
    for seed in range(20):
        out = data.photometric(img.copy(), np.random.default_rng(seed), dict(AUG_OFF, brightness_contrast=1.0))
        assert (out[:4] <= 51).all() and (out[4:] > 100).all()  # black rises by at most beta <= 0.2 * 255
        blacks.append(int(out[0, 0, 0]))
    # beta < 0 about half of the time: black stays black (an absolute value would turn -beta into grey)
    assert 5 <= blacks.count(0) <= 15, blacks


# ---------------------------------------------------------------------------------------------- command lines

BAD_TRAIN = [('--batch', '0'), ('--batch', '-3'), ('--batch', 'x'), ('--img', '-64'), ('--img', '0'),
             ('--epochs', '0'), ('--workers', '-2'), ('--patience', '-1'), ('--conf-thres', '1.5'),
             ('--iou-thres', '-0.1'), ('--label-smoothing', '2'), ('--max-det', '0'), ('--hyp', 'lr0=abc'),
             ('--hyp', 'lr0'), ('--hyp', 'lr9=1'), ('--names', 'missing.txt'), ('--resume', 'IMAGE'),
             ('--resume', 'missing.pt'), ('--weights', 'IMAGE'), ('--weights', 'nothere.pt'), ('--device', '7'),
             ('--device', 'gpu'), ('--cfg', 'q'), ('--cache', 'gpu'), ('--seed', '-1')]
BAD_DETECT = [('--img', '0'), ('--img', '-5'), ('--conf-thres', '2'), ('--iou-thres', 'high'), ('--max-det', '0'),
              ('--line-thickness', '0'), ('--classes', '-1'), ('--weights', 'IMAGE'), ('--device', '3')]


@pytest.mark.parametrize('script,flag,value', [('train', *a) for a in BAD_TRAIN] + [('detect', *a) for a in BAD_DETECT])
def test_a_bad_flag_value_is_refused_naming_the_flag(tmp_path, capsys, script, flag, value):
    image = tmp_path / 'x.jpg'
    cv2.imwrite(str(image), scene(32, 32, []))
    value = str(image) if value == 'IMAGE' else value
    parse = T.parse_args if script == 'train' else lambda argv: detect.parse_args([str(image), *argv])
    with pytest.raises(SystemExit) as e:
        parse(['--val-only', flag, value] if flag == '--batch' and value == '0' else [flag, value])
    err = capsys.readouterr().err
    assert e.value.code == 2 and f'argument {flag}' in err and value in err and 'Traceback' not in err, err


def test_flags_that_depend_on_the_processes_or_the_weights(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(T, 'WORLD_SIZE', 3)
    with pytest.raises(SystemExit) as e:  # each process takes every 3rd image: its batches would mix rect shapes
        T.parse_args(['--rect', '--batch', '6'])
    assert e.value.code == 2 and 'argument --rect: one process only' in capsys.readouterr().err
    last = tmp_path / 'exp/weights/last.pt'  # --resume (or a torchrun restart) on 3 processes: the default batch
    last.parent.mkdir(parents=True)          # 16 does not divide, the run's own batch does
    torch.save(dict(epoch=0, optimizer={}, opt=dict(batch=6, epochs=3)), last)
    opt, ckpt, run = support.runs.pick_run(T.parse_args(['--resume', str(last), '--batch', '6']), T.parse_args)
    assert opt.batch == 6 and ckpt['epoch'] == 0 and run == tmp_path / 'exp'
    monkeypatch.setattr(T, 'WORLD_SIZE', 1)
    (tmp_path / 'three.yaml').write_text(f'path: {shared(COCO128)}\ntrain: images/train2017\nval: images/train2017\n'
                                         'names: [a, b, c]\n')
    with pytest.raises(SystemExit, match='has 80 classes, .*three.yaml names 3'):
        T.run_val_only(T.parse_args(['--val-only', '--weights', str(shared(WEIGHTS)), '--data', str(tmp_path / 'three.yaml')]))
    if not torch.cuda.is_available():  # --device cuda is cuda:0
        with pytest.raises(ValueError, match="'0': no such CUDA device"):
            support.cli.select_device('cuda')


def test_bad_flags_on_the_real_command_lines(tmp_path):
    r = run_detect(shared(BUS), '--weights', WEIGHTS, '--classes', '0', '99', cwd=tmp_path)
    assert r.returncode == 2 and 'argument --classes: 99 is not a class' in r.stderr and '0 to 79' in r.stderr
    r = run_train('--data', tmp_path, '--hyp', 'lr0=abc', cwd=tmp_path)
    assert r.returncode == 2 and 'argument --hyp' in r.stderr and 'Traceback' not in r.stderr
    r = subprocess.run([sys.executable, str(ROOT / 'data.py'), str(tmp_path), '--img', '0'], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and 'argument --img' in r.stderr and 'Traceback' not in r.stderr


# ---------------------------------------------------------------------------------------------- data YAMLs, downloads

def serve(files):
    """A loopback HTTP server of files {name: bytes}: it honours Range, logs (name, Range) of each request, and
    cuts the first response of each name in server.cut halfway, as a dropped connection would."""
    import http.server
    import re
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            name, srv = self.path.lstrip('/'), self.server
            srv.requests.append((name, self.headers.get('Range')))
            if name not in srv.files:
                return self.send_error(404)
            body = srv.files[name]
            start = int(re.match(r'bytes=(\d+)-', self.headers['Range'])[1]) if self.headers.get('Range') else 0
            self.send_response(206 if start else 200)
            self.send_header('Content-Length', str(len(body) - start))
            self.end_headers()
            end = start + (len(body) - start) // 2 if name in srv.cut else len(body)
            srv.cut.discard(name)
            self.wfile.write(body[start:end])

        def log_message(self, *args):
            pass

    srv = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
    srv.files, srv.cut, srv.requests = files, set(), []
    srv.url = f'http://127.0.0.1:{srv.server_address[1]}/'
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def zip_bytes(entries):
    """A zip in memory of {name in the zip: file path or bytes}."""
    import io
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, 'w') as z:
        for name, content in entries.items():
            z.writestr(name, content if isinstance(content, bytes) else Path(content).read_bytes())
    return buf.getvalue()


def mini_coco_zips(tmp_path):
    """COCO in miniature, laid out as the real zips: coco2017labels.zip (coco/labels/<split>/*.txt and
    coco/<split>.txt lists of ./images/... paths), train2017.zip and val2017.zip (<split>/*.jpg)."""
    shapes = make_shapes_dataset(tmp_path / 'shapes', n_train=16, n_val=8, size=128)
    labels, zips = {}, {}
    for split, coco_split in (('train', 'train2017'), ('val', 'val2017')):
        imgs = sorted((shapes / 'images' / split).glob('*.jpg'))
        zips[f'{coco_split}.zip'] = zip_bytes({f'{coco_split}/{p.name}': p for p in imgs})
        labels.update({f'coco/labels/{coco_split}/{p.stem}.txt': shapes / 'labels' / split / f'{p.stem}.txt' for p in imgs})
        labels[f'coco/{coco_split}.txt'] = ''.join(f'./images/{coco_split}/{p.name}\n' for p in imgs).encode()
    zips['coco2017labels.zip'] = zip_bytes(labels)
    return zips


def test_the_walk_through_command_downloads_coco_and_trains(tmp_path):
    srv = serve(mini_coco_zips(tmp_path))
    repo = tmp_path / 'yolov5'  # a copy of the project: datasets go to ../datasets beside it, as in the original
    repo.mkdir()
    copy_project(repo)
    cmd = [sys.executable, str(repo / 'train.py'), '--data', 'coco.yaml', '--epochs', '1', '--weights', '',
           '--cfg', 'yolov5n.yaml', '--batch-size', '8', '--img', '128', '--workers', '0']
    env = dict(os.environ, YOLO_MIRROR=srv.url)
    r = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(name for name, _ in srv.requests) == ['coco2017labels.zip', 'train2017.zip', 'val2017.zip']
    coco = tmp_path / 'datasets' / 'coco'
    assert len(list((coco / 'images' / 'train2017').glob('*.jpg'))) == 16 and not list(coco.rglob('*.zip'))
    assert 'train: Scanned' in r.stdout and '16 images' in r.stdout and 'val: Scanned' in r.stdout
    __import__('shutil').rmtree(coco / 'images' / 'val2017')  # deleted: its marker no longer holds, fetched again
    r = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and [name for name, _ in srv.requests[3:]] == ['val2017.zip'], r.stderr[-2000:]
    r = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and len(srv.requests) == 4 and 'Downloading' not in r.stderr  # nothing fetched again
    assert (repo / 'runs/train/exp3/weights/best.pt').exists()


def test_a_cut_download_resumes_and_bad_zips_leave_nothing(tmp_path, monkeypatch):
    blob = np.random.default_rng(0).bytes(3_000_000)
    srv = serve({'blob.bin': blob, 'bad.zip': b'PK\x03\x04 not really a zip' * 1000})
    monkeypatch.setenv('YOLO_MIRROR', srv.url)
    srv.cut.add('blob.bin')
    with pytest.raises(FileNotFoundError, match='blob.bin: download failed .*1500000 of 3000000 bytes'):
        support.downloads.download('https://example.com/x/blob.bin', tmp_path / 'blob.bin')
    assert not (tmp_path / 'blob.bin').exists() and (tmp_path / 'blob.bin.part').stat().st_size == 1_500_000
    support.downloads.download('https://example.com/x/blob.bin', tmp_path / 'blob.bin')
    assert (tmp_path / 'blob.bin').read_bytes() == blob and not (tmp_path / 'blob.bin.part').exists()
    assert srv.requests[-1] == ('blob.bin', 'bytes=1500000-')  # the second request asked for the rest only
    dest = tmp_path / 'ds'
    monkeypatch.setattr(support.downloads, 'DATASETS_DIR', tmp_path)  # downloads only ever write inside the datasets folder
    with pytest.raises(FileNotFoundError, match='bad.zip: not a valid zip'):
        support.downloads.download_zip('https://example.com/bad.zip', dest)
    assert list(dest.iterdir()) == []
    # a mirror that is a folder, as on a machine without internet where the zips were copied by hand
    (tmp_path / 'mirror').mkdir()
    (tmp_path / 'mirror' / 'd.zip').write_bytes(zip_bytes({'d/a.txt': b'hello'}))
    monkeypatch.setenv('YOLO_MIRROR', str(tmp_path / 'mirror'))
    support.downloads.download_zip('https://example.com/d.zip', dest)
    assert (dest / 'd' / 'a.txt').read_text() == 'hello' and not (dest / 'd.zip').exists()


def test_offline_without_a_mirror_names_each_url_and_where_to_put_it(tmp_path, monkeypatch):
    monkeypatch.delenv('YOLO_MIRROR', raising=False)
    repo = tmp_path / 'yolov5'  # a copy of the project: downloads only ever write into ../datasets beside it
    repo.mkdir()
    copy_project(repo)
    (repo / 'ds.yaml').write_text('path: ../datasets/ds\ntrain: images/train\nval: images/val\nnames: [a]\n'
                                  'download: http://127.0.0.1:9/ds.zip\n')  # nothing listens on port 9
    r = subprocess.run([sys.executable, str(repo / 'train.py'), '--data', str(repo / 'ds.yaml'), '--weights', ''],
                       cwd=repo, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and 'Traceback' not in r.stderr, r.stderr
    assert 'http://127.0.0.1:9/ds.zip: download failed' in r.stderr
    assert f'put it at {tmp_path}/datasets/ds.zip' in r.stderr
    (tmp_path / 'coco.yaml').write_text('path: coco\ntrain: train2017.txt\nval: val2017.txt\nnames: [a]\ndownload: |\n'
                                        "  urls = ['http://images.cocodataset.org/zips/val2017.zip']\n  download(urls)\n")
    with pytest.raises(FileNotFoundError, match='is a script, which is never run.*val2017.zip'):
        support.data_yaml.data_spec(tmp_path / 'coco.yaml')


ORIGINAL_COCO128_YAML = '''# YOLOv5 by Ultralytics, AGPL-3.0 license
# COCO128 dataset https://www.kaggle.com/ultralytics/coco128 (first 128 images from COCO train2017)
# parent
# ├── yolov5
# └── datasets
#     └── coco128  ← downloads here (7 MB)

# Train/val/test sets as 1) dir: path/to/imgs, 2) file: path/to/imgs.txt, or 3) list: [path/to/imgs1, path/to/imgs2, ..]
path: ../datasets/coco128  # dataset root dir
train: images/train2017  # train images (relative to 'path') 128 images
val: images/train2017  # val images (relative to 'path') 128 images
test:  # test images (optional)

# Classes
names:
''' + ''.join(f'  {i}: {n}\n' for i, n in enumerate(support.datasets.COCO_NAMES)) + '''

# Download script/URL (optional)
download: https://ultralytics.com/assets/coco128.zip
'''


def test_data_yaml_forms(tmp_path):
    (tmp_path / 'datasets').mkdir()
    (tmp_path / 'datasets' / 'coco128').symlink_to(shared(COCO128))
    (tmp_path / 'data').mkdir()
    (tmp_path / 'data' / 'coco128.yaml').write_text(ORIGINAL_COCO128_YAML)  # path relative to the YAML's folder
    spec = support.data_yaml.data_spec(tmp_path / 'data' / 'coco128.yaml')
    assert spec['names'] == support.datasets.COCO_NAMES and Path(spec['train'][0]).resolve() == (COCO128 / 'images/train2017').resolve()
    # an export service's data.yaml in the dataset root beside train/ and valid/, with ../ paths and its own block
    root = tmp_path / 'export'
    for split, n in (('train', 3), ('valid', 2)):
        make_dataset(tmp_path / 'tmp', [[(0, 10, 10, 50, 50)]] * n, split=split)
        (root / split).mkdir(parents=True)
        for kind in ('images', 'labels'):
            os.replace(tmp_path / 'tmp' / kind / split, root / split / kind)
    (root / 'data.yaml').write_text("train: ../train/images\nval: ../valid/images\ntest: ../test/images\n\nnc: 3\n"
                                    "names: ['cat', \"hot dog\", 'it''s']\n\nroboflow:\n  workspace: me\n  version: 2\n"
                                    "  url: https://universe.roboflow.com/me/x/dataset/2\n")
    spec = support.data_yaml.data_spec(root / 'data.yaml')
    assert spec['names'] == ['cat', 'hot dog', "it's"] and spec['val'] == [str(root / 'valid/images')]
    ds = data.YOLODataset(spec['train'], 64, nc=3)
    assert len(ds) == 3 and all(len(lb) == 1 for lb in ds.labels)
    # block lists, block scalars, comments; the errors name file and line
    (root / 'b.yaml').write_text('train: [../train/images, ../valid/images]  # both\nval: ../valid/images\nnames:\n'
                                 '- cat\n- dog\n- "#3"\ndescription: >\n  folded\n  text\n')
    spec = support.data_yaml.data_spec(root / 'b.yaml')
    assert spec['names'] == ['cat', 'dog', '#3'] and len(support.datasets.find_images(spec['train'])) == 5
    assert support.data_yaml.read_yaml(root / 'b.yaml')['description'] == 'folded text'
    for text, error in [('nc: 2\nnames: [a, b, c]\n', 'nc is 2 but 3 names'),
                        ('names: {0: a}\n', 'c.yaml:3: .* not in the YAML read here'),
                        ('names:\n  a:\n    b: 1\n', 'c.yaml:5: one nested level only'),
                        ('train: x\njust words\n', 'c.yaml:2: not a `key: value` line')]:
        (root / 'c.yaml').write_text('train: ../train/images\nval: ../valid/images\n' * ('train' not in text) + text)
        with pytest.raises(ValueError, match=error):
            support.data_yaml.data_spec(root / 'c.yaml')
    (root / 'c.yaml').write_text('path: elsewhere\ntrain: images/train\nval: images/val\nnames: [a]\n')
    with pytest.raises(FileNotFoundError, match=f'train: images/train not found; tried {root}/elsewhere/images/train, '
                                                f'{root}/images/train'):
        support.data_yaml.data_spec(root / 'c.yaml')


def test_single_class_and_frozen_backbone(tmp_path):
    root = make_shapes_dataset(tmp_path / 'shapes', n_train=8, n_val=4, size=96)
    run = T.Trainer(T.parse_args(['--weights', str(shared(WEIGHTS)), '--data', str(root), '--img', '96', '--batch', '4',
                                '--epochs', '1', '--workers', '0', '--project', str(tmp_path / 'runs'),
                                '--noautoanchor', '--single-cls', '--freeze', '10'])).fit()
    ckpt = torch.load(run / 'weights/last.pt', weights_only=True)
    official = M.load_model(WEIGHTS).state_dict()
    assert ckpt['config']['names'] == ['item'] and ckpt['config']['nc'] == 1
    conv = lambda k: k.endswith('conv.weight')
    assert all(torch.equal(ckpt['model'][k].float(), official[k].half().float()) for k in official
               if conv(k) and int(k.split('.')[1]) < 10)  # the backbone kept its weights (stored in fp16)
    assert not all(torch.equal(ckpt['model'][k].float(), official[k].half().float()) for k in official
                   if conv(k) and 10 <= int(k.split('.')[1]) < 24)


def test_cache_ram_refuses_what_memory_cannot_hold(tmp_path, monkeypatch):
    root, _ = rectangles_dataset(tmp_path)
    monkeypatch.setattr(support.datasets, 'available_memory', lambda: 100_000)
    with pytest.raises(ValueError, match=r'--cache ram needs 0.0 GB for 6 images at --img 640, but 0.0 GB are free'):
        data.YOLODataset(root, 640, cache='ram', nc=18)


def test_results_png_follows_results_csv(tmp_path):
    csv = tmp_path / 'results.csv'
    row = lambda e: {'epoch': e, **{k: 1 / (e + 1) for k in ('train/box_loss', 'train/obj_loss', 'train/cls_loss')},
                     **{k: e / 10 for k in VAL_METRICS}, 'x/lr0': 0.01, 'x/lr1': 0.01, 'x/lr2': 0.01}
    csv.write_text(','.join(f'{k:>20}' for k in row(0)) + '\n' + ','.join(f'{v:>20.5g}' for v in row(0).values()) + '\n')
    support.plots.plot_results(csv)  # one epoch: dots, no crash
    one = cv2.imread(str(tmp_path / 'results.png'))
    csv.write_text(csv.read_text() + ','.join(f'{v:>20.5g}' for v in row(1).values()) + '\n')
    support.plots.plot_results(csv)
    two = cv2.imread(str(tmp_path / 'results.png'))
    assert one.shape == two.shape == (1000, 2000, 3) and (one != two).any()


# ---------------------------------------------------------------------------------------------- faults

KILLER = '''import os, signal, sys
sys.path.insert(0, {root!r})
import train
real = train.Trainer.optimizer_step


def optimizer_step(self):  # rank 1 kills itself once, in the middle of epoch 2 (2 steps per epoch)
    real(self)
    if self.updates == 5 and train.RANK == 1 and not os.path.exists({marker!r}):
        open({marker!r}, 'w').close()
        os.kill(os.getpid(), signal.SIGKILL)


train.Trainer.optimizer_step = optimizer_step
train.Trainer(train.parse_args()).fit()
'''


def test_torchrun_restart_continues_the_same_run(tmp_path):
    root = make_shapes_dataset(tmp_path / 'shapes', n_train=16, n_val=4, size=96)
    script = tmp_path / 'killer.py'
    script.write_text(KILLER.format(root=str(ROOT), marker=str(tmp_path / 'kill.marker')))
    runs = {}
    for name, prog in (('killed', script), ('whole', ROOT / 'train.py')):
        r = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
                            '--max-restarts', '1', '--monitor-interval', '0.2', str(prog), '--weights', '', '--data',
                            str(root), '--names', str(root / 'names.txt'), '--img', '96', '--batch', '8', '--epochs', '3',
                            '--device', 'cpu', '--workers', '0', '--hyp', 'nbs=8', '--noautoanchor',
                            '--project', str(tmp_path / name)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        runs[name] = r
    assert (tmp_path / 'kill.marker').exists() and 'Resuming' in runs['killed'].stdout
    assert [d.name for d in (tmp_path / 'killed').iterdir()] == ['exp']  # one run folder, continued
    assert [row['epoch'] for row in last_results(tmp_path / 'killed/exp')] == [0, 1, 2]
    a, b = (torch.load(tmp_path / name / 'exp/weights/last.pt', weights_only=True) for name in ('killed', 'whole'))
    assert all(torch.equal(a['model'][k], b['model'][k]) for k in a['model'])  # as if nothing had happened


class NaNLoss(L.YOLOLoss):
    """The loss, but not finite at the steps listed in bad (counted across the run; 'all' from the first on)."""
    bad, calls = set(), 0

    def __call__(self, preds, targets):
        loss, items = super().__call__(preds, targets)
        if not preds[0].requires_grad:  # validation
            return loss, items
        NaNLoss.calls += 1
        return (loss * float('nan'), items) if NaNLoss.calls in self.bad or NaNLoss.calls >= self.bad_from else (loss, items)


def test_non_finite_losses_are_skipped_then_stop_the_run(tmp_path, monkeypatch, capsys):
    root = make_shapes_dataset(tmp_path / 'shapes', n_train=8, n_val=2, size=64)
    monkeypatch.setattr(T, 'YOLOLoss', NaNLoss)
    args = lambda project: T.parse_args(['--weights', '', '--data', str(root), '--names', str(root / 'names.txt'),
                                         '--img', '64', '--batch', '4', '--epochs', '3', '--workers', '0',
                                         '--noautoanchor', '--project', str(tmp_path / project)])
    NaNLoss.bad, NaNLoss.bad_from, NaNLoss.calls = {3}, 10 ** 9, 0  # one bad batch (epoch 1): skipped
    run = T.Trainer(args('one')).fit()
    err = capsys.readouterr().err
    assert 'loss nan, step skipped; the batch: ' in err and str(root / 'images/train') in err
    assert [r['epoch'] for r in last_results(run)] == [0, 1, 2]
    assert all(v.isfinite().all() for v in torch.load(run / 'weights/last.pt', weights_only=True)['model'].values())
    NaNLoss.bad, NaNLoss.bad_from, NaNLoss.calls = set(), 3, 0  # from epoch 1 on (2 steps an epoch): stops in epoch 2
    with pytest.raises(SystemExit, match='3 steps in a row with a non-finite loss: training stopped, .*last.pt holds epoch 1'):
        T.Trainer(args('all')).fit()
    ckpt = torch.load(tmp_path / 'all/exp/weights/last.pt', weights_only=True)
    assert ckpt['epoch'] == 1 and all(v.isfinite().all() for v in ckpt['model'].values())


@pytest.mark.parametrize('nosave', [False, True])
def test_weights_that_turn_non_finite_leave_the_last_good_epoch(tmp_path, monkeypatch, nosave):
    root = make_shapes_dataset(tmp_path / 'shapes', n_train=8, n_val=2, size=64)
    real = T.Trainer.optimizer_step

    def poison(self):  # one step an epoch (8 images, batch 8, nbs 8): the weights go bad in epoch 1
        real(self)
        if self.updates == 2:
            next(self.model.parameters()).data.fill_(float('nan'))
    monkeypatch.setattr(T.Trainer, 'optimizer_step', poison)
    args = ['--weights', '', '--data', str(root), '--names', str(root / 'names.txt'), '--img', '64', '--batch', '8',
            '--epochs', '3', '--workers', '0', '--noautoanchor', '--hyp', 'nbs=8', '--project', str(tmp_path)]
    with pytest.raises(SystemExit, match='no longer finite: training stopped, .*last.pt holds epoch 0'):
        T.Trainer(T.parse_args(args + ['--nosave'] * nosave)).fit()
    ckpt = torch.load(tmp_path / 'exp/weights/last.pt', weights_only=True)
    assert ckpt['epoch'] == 0 and all(v.isfinite().all() for k in ('model', 'ema') for v in ckpt[k].values())
    assert [r['epoch'] for r in last_results(tmp_path / 'exp')] == [0]  # epoch 1's row is never written


def test_a_full_disk_or_an_unwritable_run_folder_is_a_clear_error(tmp_path, monkeypatch):
    root = make_shapes_dataset(tmp_path / 'shapes', n_train=8, n_val=2, size=64)
    args = ['--weights', '', '--data', str(root), '--names', str(root / 'names.txt'), '--img', '64', '--batch', '8',
            '--epochs', '2', '--workers', '0', '--noautoanchor']
    (tmp_path / 'file').write_text('not a folder')
    with pytest.raises(SystemExit, match='cannot write the run folder .*file/exp'):
        T.Trainer(T.parse_args(args + ['--project', str(tmp_path / 'file')])).fit()
    real, saves = torch.save, []

    def full_disk(obj, path):  # the third save (epoch 1's last.pt) finds the disk full halfway
        saves.append(path)
        if len(saves) == 3:
            Path(path).write_bytes(b'half a checkpoint')
            raise RuntimeError('PytorchStreamWriter failed writing file data/0: file write failed')
        real(obj, path)
    monkeypatch.setattr(torch, 'save', full_disk)
    with pytest.raises(SystemExit, match=r'cannot write .*last.pt \(PytorchStreamWriter.*\); it still holds the last'):
        T.Trainer(T.parse_args(args + ['--project', str(tmp_path / 'runs')])).fit()
    weights = tmp_path / 'runs/exp/weights'
    assert torch.load(weights / 'last.pt', weights_only=True)['epoch'] == 0 and not list(weights.glob('*.tmp'))


# ---------------------------------------------------------------------------------------------- mixed precision

HALF = support.cli.half_dtype(torch.device('cpu'))  # bf16 where the CPU has it natively, else None


@pytest.mark.skipif(HALF is None, reason='this CPU has no native bf16')
def test_half_inference_agrees_with_fp32(tmp_path):
    r = run_detect(shared(BUS), '--weights', WEIGHTS, '--half', '--save-txt', '--save-conf', cwd=tmp_path)
    assert r.returncode == 0 and 'bus.jpg: 640x480 4 persons, 1 bus, ' in r.stdout, r.stderr
    ours = read_labels(tmp_path / 'runs/detect/exp/labels/bus.txt')
    assert match_rows(ours, read_labels(SHARED / 'expected' / 'bus_yolov5n_640.txt')) < 0.01
    r = run_train('--val-only', '--half', '--weights', WEIGHTS, '--data', COCO128, '--img', 320, '--batch', 16, cwd=tmp_path)
    row = next(line for line in r.stdout.splitlines() if line.split()[:1] == ['all']).split()
    assert abs(float(row[5]) - 0.458) < 0.01 and abs(float(row[6]) - 0.290) < 0.01, row


@pytest.mark.skipif(HALF is None, reason='this CPU has no native bf16')
def test_mixed_precision_training_checks_itself_first(tmp_path, monkeypatch, capsys):
    root = make_shapes_dataset(tmp_path / 'shapes', n_train=8, n_val=2, size=64)
    args = ['--weights', '', '--data', str(root), '--names', str(root / 'names.txt'), '--img', '64', '--batch', '8',
            '--epochs', '1', '--workers', '0', '--noautoanchor', '--project', str(tmp_path / 'runs')]
    T.Trainer(T.parse_args(args)).fit()
    assert f'AMP: mixed precision training in {HALF}' in capsys.readouterr().out
    T.Trainer(T.parse_args(args + ['--no-amp'])).fit()
    assert 'AMP: off, training in fp32' in capsys.readouterr().out
    real = M.YOLOv5.forward

    def skewed(model, x):  # the check's single image comes out wrong in 16 bits
        out = real(model, x)
        return (out[0] * 2, out[1]) if torch.is_autocast_enabled(x.device.type) and len(x) == 1 else out
    monkeypatch.setattr(M.YOLOv5, 'forward', skewed)
    T.Trainer(T.parse_args(args)).fit()  # outputs that disagree: one warning, and fp32
    out = capsys.readouterr().out
    assert 'AMP: WARNING: torch.bfloat16 outputs disagree with fp32 on ' in out and 'training in fp32' in out


def test_a_stripped_checkpoint_validates_as_before(tmp_path):
    net = M.load_model(shared(WEIGHTS))
    copy = lambda: {k: v.clone() for k, v in net.state_dict().items()}  # as a training run's: 3 copies of the weights
    state = dict(epoch=2, model=copy(), ema=copy(), optimizer={'state': copy()}, updates=9, opt={}, hyp={}, config=net.config())
    rows = []
    for name in ('full.pt', 'stripped.pt'):
        torch.save(state, tmp_path / name)
    support.checkpoints.strip_checkpoint(tmp_path / 'stripped.pt')
    stripped = torch.load(tmp_path / 'stripped.pt', weights_only=True)
    assert not {'optimizer', 'ema', 'updates'} & set(stripped) and stripped['model']['model.0.conv.weight'].dtype == torch.float16
    assert (tmp_path / 'stripped.pt').stat().st_size < (tmp_path / 'full.pt').stat().st_size / 5
    for name in ('full.pt', 'stripped.pt'):
        r = run_train('--val-only', '--weights', tmp_path / name, '--data', shared(COCO128), '--img', 320, '--batch', 16,
                      cwd=tmp_path)
        rows.append([float(v) for v in next(x for x in r.stdout.splitlines() if x.split()[:1] == ['all']).split()[3:]])
    assert np.abs(np.array(rows[0]) - rows[1]).max() <= 0.001, rows


# ---------- results.csv by column name (issue 17)

def test_results_csv_is_matched_by_name_when_a_column_is_added():
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        csv = Path(d) / 'results.csv'
        support.results.write_results(csv, {'epoch': 0, 'train/box_loss': 0.5, 'metrics/mAP_0.5': 0.1, 'x/lr0': 0.01})
        support.results.write_results(csv, {'epoch': 1, 'train/box_loss': 0.4, 'metrics/new': 7.0, 'metrics/mAP_0.5': 0.2,
                              'x/lr0': 0.01})  # a column added in the middle
        head, rows = support.results.read_results(csv)
        assert head == ['epoch', 'train/box_loss', 'metrics/new', 'metrics/mAP_0.5', 'x/lr0']
        assert rows[0][:2] == [0, 0.5] and np.isnan(rows[0][2]) and rows[0][3:] == [0.1, 0.01]
        assert rows[1] == [1, 0.4, 7.0, 0.2, 0.01]
        support.plots.plot_results(csv)  # by name: the new column gets its own panel, the nan before it is no line
        assert cv2.imread(str(Path(d) / 'results.png')).shape == (500, 2000, 3)
        csv.write_text(csv.read_text() + '   2, 0.3, 7')  # a row cut short by a crash
        support.results.trim_results(csv, 1)
        (kept,) = support.results.read_results(csv)[1]  # epoch 0 only, its nan kept, the cut row gone
        assert kept[:2] == [0, 0.5] and np.isnan(kept[2]) and kept[3:] == [0.1, 0.01]


def test_a_resumed_run_takes_a_metric_added_in_the_middle(tmp_path, monkeypatch):
    root = make_shapes_dataset(tmp_path / 'shapes', n_train=16, n_val=8, size=128)
    interrupted_at_epoch_1(monkeypatch, tiny_args(root, tmp_path / 'runs', '--epochs', '2'))
    real_validate = T.validate

    def with_a_new_metric(*args, **kwargs):
        results = real_validate(*args, **kwargs)
        keys = list(results)
        i = keys.index('metrics/mAP_0.5')
        return {k: results[k] for k in keys[:i]} | {'metrics/new': 42.0} | {k: results[k] for k in keys[i:]}
    monkeypatch.setattr(T, 'validate', with_a_new_metric)
    run = tmp_path / 'runs' / 'exp'
    T.Trainer(T.parse_args(['--resume', str(run / 'weights/last.pt'), '--workers', '0'])).fit()
    head, rows = support.results.read_results(run / 'results.csv')
    new = head.index('metrics/new')
    assert head[new + 1] == 'metrics/mAP_0.5' and [r[0] for r in rows] == [0, 1]
    assert np.isnan(rows[0][new]) and rows[1][new] == 42.0
    assert rows[0][head.index('metrics/mAP_0.5')] == last_results(run)[0]['metrics/mAP_0.5']
    assert cv2.imread(str(run / 'results.png')).shape == (1500, 2000, 3)  # 11 panels, five a row
# ---------- export.py and hubconf.py (issue 21)
import importlib.util  # noqa: E402
import json  # noqa: E402

from PIL import Image  # noqa: E402

import export as E  # noqa: E402

HAVE_ONNX = importlib.util.find_spec('onnx') is not None
needs_onnx = pytest.mark.skipif(not HAVE_ONNX, reason='writing ONNX needs the onnx package: pip install onnx')
COCO_IMG = COCO128 / 'images/train2017/000000000009.jpg'  # 640x480: another letterbox shape than bus.jpg's


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    """The shared yolov5n.pt exported once, by the issue's command, beside a copy of it (../shared stays as it is)."""
    pt = tmp_path_factory.mktemp('export') / 'yolov5n.pt'
    shutil.copy(shared(WEIGHTS), pt)
    r = subprocess.run([sys.executable, str(ROOT / 'export.py'), '--weights', str(pt), '--include', 'torchscript',
                        *['onnx'] * HAVE_ONNX], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert 'torchscript: loaded back, outputs within 0 of PyTorch' in r.stdout, r.stdout
    return dict(pt=pt, torchscript=pt.with_suffix('.torchscript'), onnx=pt.with_suffix('.onnx'))


def detect_labels(weights, tmp_path, *sources):
    """detect.py in this process: {image stem: its label rows (cls xc yc w h conf)}."""
    out = tmp_path / Path(weights).suffix[1:]
    args = [*map(str, sources), '--weights', str(weights), '--save-txt', '--save-conf', '--nosave',
            '--project', str(out), '--name', 'exp', '--trust-code']  # (a .torchscript holds code: ours, trusted)
    assert detect.run(detect.parse_args(args)) == 0
    return {f.stem: read_labels(f) for f in (out / 'exp/labels').glob('*.txt')}


@pytest.mark.parametrize('fmt', ['torchscript', pytest.param('onnx', marks=needs_onnx)])
def test_exported_files_give_the_pt_detections(exported, tmp_path, capsys, fmt):
    pt = detect_labels(exported['pt'], tmp_path, shared(BUS), COCO_IMG)
    capsys.readouterr()
    ours = detect_labels(exported[fmt], tmp_path, BUS, COCO_IMG)  # exported at 640x640, run at 640x480 and 480x640
    out = capsys.readouterr().out
    assert 'bus.jpg: 640x480 4 persons, 1 bus, ' in out and '000000000009.jpg: 480x640 ' in out, out
    assert sorted(ours) == sorted(pt) == ['000000000009', 'bus']
    for stem in pt:
        if fmt == 'torchscript':  # the same graph, traced: the same numbers
            assert np.array_equal(ours[stem], pt[stem]), stem
        else:  # OpenCV's convolutions: the same detections, boxes and confidences to 0.005
            assert match_rows(ours[stem], pt[stem]) < 0.005, stem


def test_exported_files_hold_one_output_and_the_metadata(exported):
    files = {'config.txt': ''}
    ts = torch.jit.load(str(exported['torchscript']), _extra_files=files)
    meta = json.loads(files['config.txt'])
    assert meta['names'] == list(support.datasets.COCO_NAMES) and meta['stride'] == 32 and meta['shape'] == [1, 3, 640, 640]
    with torch.no_grad():
        y = ts(torch.rand(2, 3, 320, 192))  # any batch and size: the original's layout, (batch, anchors, 85)
    assert isinstance(y, torch.Tensor) and y.shape == (2, 3 * (40 * 24 + 20 * 12 + 10 * 6), 85)
    if not HAVE_ONNX:
        pytest.skip('reading ONNX metadata with the onnx package: pip install onnx')
    import onnx
    proto = onnx.load(str(exported['onnx']))
    props = {p.key: p.value for p in proto.metadata_props}
    assert eval(props['names']) == list(support.datasets.COCO_NAMES) and int(props['stride']) == 32  # as the original reads them
    dims = lambda v: [d.dim_value for d in v.type.tensor_type.shape.dim]
    assert [o.name for o in proto.graph.output] == ['output0'] and dims(proto.graph.output[0]) == [1, 25200, 85]
    assert dims(proto.graph.input[0]) == [1, 3, 640, 640]  # declared: the export size
    net = E.OpenCVNet(exported['onnx'])  # our hand-made protobuf reader agrees with the onnx package
    assert net.meta == props and net.shape == [1, 3, 640, 640]


@needs_onnx
def test_export_flags(exported, tmp_path, capsys):
    import onnx
    pt = tmp_path / 'small.pt'
    shutil.copy(exported['pt'], pt)
    E.main(E.parse_args(['--weights', str(pt), '--include', 'onnx', 'torchscript', '--img', '256', '320', '--batch',
                         '2', '--half', '--opset', '13']))
    assert 'within' in capsys.readouterr().out
    proto = onnx.load(str(tmp_path / 'small.onnx'))
    assert proto.opset_import[0].version == 13
    assert [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim] == [2, 3, 256, 320]
    assert proto.graph.initializer[0].data_type == onnx.TensorProto.FLOAT16
    ts = E.load_any(tmp_path / 'small.torchscript', trust=True)
    assert ts.dtype == next(ts.run.parameters()).dtype == torch.float16
    ref = detect_labels(exported['pt'], tmp_path, shared(BUS))['bus']
    for fmt in ('torchscript', 'onnx'):  # fp16 weights, run at another size than exported: close to the fp32 .pt
        assert match_rows(detect_labels(tmp_path / f'small.{fmt}', tmp_path, BUS)['bus'], ref) < 0.01, fmt
    E.main(E.parse_args(['--weights', str(pt), '--include', 'onnx', '--dynamic']))
    shape = onnx.load(str(tmp_path / 'small.onnx')).graph.input[0].type.tensor_type.shape
    assert [d.dim_param for d in shape.dim] == ['batch', '', 'height', 'width']
    assert detect_labels(tmp_path / 'small.onnx', tmp_path, BUS)['bus'].shape == ref.shape  # OpenCV runs it too


def test_missing_onnx_is_named_with_its_pip_command(exported, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, 'onnx', None)  # `import onnx` now fails, as where it is not installed
    pt = tmp_path / 'yolov5n.pt'
    shutil.copy(exported['pt'], pt)
    with pytest.raises(SystemExit, match='pip install onnx'):
        E.main(E.parse_args(['--weights', str(pt), '--include', 'torchscript', 'onnx']))
    assert sorted(p.name for p in tmp_path.iterdir()) == ['yolov5n.pt'], 'nothing written before the message'
    if exported['onnx'].exists():  # reading an ONNX file never needs the package
        model = E.load_any(exported['onnx'])
        assert model.names == list(support.datasets.COCO_NAMES)


@pytest.mark.filterwarnings('ignore::DeprecationWarning')  # torch's legacy ONNX exporter, as export.py uses it
def test_an_onnx_file_of_fixed_sizes_is_run_as_the_original_runs_it(exported, tmp_path):
    """A file whose sizes are fixed inside (the original's export without --dynamic; its names as a dict) gets each
    image centred in its size: the .pt's detections on detect.py's letterbox of the original, square."""
    onnx = pytest.importorskip('onnx')
    net = E.Traceable(M.load_model(exported['pt'], fuse=True))
    file = tmp_path / 'static.onnx'
    torch.onnx.export(net, torch.zeros(1, 3, 640, 640), str(file), input_names=['images'], output_names=['output0'],
                      dynamo=False)
    proto = onnx.load(str(file))
    proto.metadata_props.add(key='names', value=str(dict(enumerate(support.datasets.COCO_NAMES))))
    onnx.save(proto, str(file))
    model = E.load_any(file)
    assert model.fixed == [1, 3, 640, 640] and model.names == list(support.datasets.COCO_NAMES)
    img = cv2.imread(str(shared(BUS)))
    square = data.to_tensor(data.letterbox(img, 640, auto=False)[0]).float()[None] / 255
    rect = data.to_tensor(data.letterbox(img, 640)[0]).float()[None] / 255
    with torch.no_grad():
        want = M.non_max_suppression(net(square))[0]
        got = M.non_max_suppression(model(rect)[0])[0]
    want[:, :4] = M.scale_boxes(want[:, :4], square.shape[2:], img.shape[:2])
    got[:, :4] = M.scale_boxes(got[:, :4], rect.shape[2:], img.shape[:2])
    assert len(got) == len(want) == 4  # (the rect image finds 5: another input, other detections)
    torch.testing.assert_close(got, want, atol=0.05, rtol=0)
    with pytest.raises(ValueError, match='takes images up to 640x640'):
        model(torch.zeros(1, 3, 672, 640))


def test_val_only_runs_exported_files(exported, tmp_path, capsys):
    root = tmp_path / 'coco8'
    for sub, ext in (('images', 'jpg'), ('labels', 'txt')):
        (root / sub / 'val').mkdir(parents=True)
        for f in sorted((shared(COCO128) / sub / 'train2017').glob(f'*.{ext}'))[:8]:
            shutil.copy(f, root / sub / 'val')
    rows = {}
    for fmt in ['pt', 'torchscript'] + ['onnx'] * HAVE_ONNX:  # 2 batches of 4, each of its own rect shape
        T.run_val_only(T.parse_args(['--val-only', '--weights', str(exported[fmt]), '--data', str(root), '--img', '256',
                                     '--batch', '4', '--project', str(tmp_path / fmt), '--trust-code']))
        out = capsys.readouterr().out
        rows[fmt] = np.array(next(x for x in out.splitlines() if x.split()[:1] == ['all']).split()[1:], float)
    assert rows['pt'][0] == 8 and rows['pt'][4] > 0.3, rows  # images, mAP50
    for fmt, row in rows.items():
        assert np.abs(row - rows['pt']).max() <= (0 if fmt == 'torchscript' else 0.002), (fmt, rows)


def test_hub_custom_takes_files_arrays_pil_images_and_lists(exported, tmp_path, capsys):
    hub = torch.hub.load(str(ROOT), 'custom', path=str(exported['pt']), source='local', device='cpu')
    want = detect_labels(exported['pt'], tmp_path, shared(BUS), COCO_IMG)
    capsys.readouterr()
    rgb = cv2.imread(str(BUS))[..., ::-1]  # RGB, as the original documents its arrays
    inputs = {'file': str(BUS), 'array': rgb, 'pil': Image.open(BUS), 'path': BUS}
    for kind, im in inputs.items():
        r = hub(im)
        assert match_rows(xywhn_rows(r, 0), want['bus']) < 0.002, kind  # detect.py rounds its boxes to pixels
    r = hub([str(BUS), str(COCO_IMG), rgb, Image.open(COCO_IMG)], size=640)
    assert len(r) == r.n == 4 and r.names == list(support.datasets.COCO_NAMES)
    for i, stem in enumerate(['bus', '000000000009'] * 2):
        assert match_rows(xywhn_rows(r, i), want[stem]) < 0.002, i
        wh = torch.tensor([r.ims[i].shape[1], r.ims[i].shape[0]] * 2)
        torch.testing.assert_close(r.xyxyn[i][:, :4] * wh, r.xyxy[i][:, :4])
        torch.testing.assert_close(r.xywh[i][:, :4], support.datasets.xyxy2xywh(r.xyxy[i][:, :4]))
        assert torch.equal(r.xywhn[i][:, 4:], r.xyxy[i][:, 4:])
    r.print()
    out = capsys.readouterr().out
    assert 'image 1/4: 1080x810 4 persons, 1 bus' in out and 'image 2/4: 480x640 ' in out and 'Speed: ' in out, out
    pictures = r.render()
    assert len(pictures) == 4 and pictures[0].shape == rgb.shape and (pictures[0] != rgb).any()
    save_dir = r.save(save_dir=tmp_path / 'hub/exp')
    assert sorted(p.name for p in save_dir.iterdir()) == ['000000000009_1.jpg', '000000000009_3.jpg', 'bus.jpg',
                                                          'image2.jpg']  # one file per image
    crops = r.crop(save_dir=tmp_path / 'hub/exp')
    assert len(crops) == sum(len(p) for p in r.xyxy) and crops[0]['label'].split()[0] in support.datasets.COCO_NAMES
    assert len(list((tmp_path / 'hub/exp2/crops').rglob('*.jpg'))) == len(crops)
    hub.conf, hub.classes = 0.5, [5]  # the original's NMS attributes
    assert hub(str(BUS)).xyxy[0][:, 5].tolist() == []  # the bus is at 0.49


def xywhn_rows(results, i):
    """Image i of hub results as detect.py's label rows: cls xc yc w h conf."""
    x = results.xywhn[i]
    return torch.cat((x[:, 5:], x[:, :5]), 1).numpy()


@pytest.mark.parametrize('fmt', ['torchscript', pytest.param('onnx', marks=needs_onnx)])
def test_hub_custom_runs_exported_files(exported, tmp_path, capsys, fmt):
    hub = torch.hub.load(str(ROOT), 'custom', path=str(exported[fmt]), source='local', trust=True)
    want = detect_labels(exported['pt'], tmp_path, shared(BUS))['bus']
    assert match_rows(xywhn_rows(hub(Image.open(BUS)), 0), want) < 0.005


def test_export_and_hub_sit_on_top_of_model_and_data():
    import ast
    for name, allowed in (('export', {'data', 'model'}), ('hubconf', {'data', 'model', 'export'}),
                          ('model', {'data'}), ('data', set())):
        tree = ast.parse((ROOT / f'{name}.py').read_text())
        imported = {a.name.split('.')[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module.split('.')[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        ours = imported & {'data', 'model', 'loss', 'train', 'detect', 'export', 'hubconf'}
        assert ours <= allowed, (name, ours)


def test_bad_export_flags_and_files(tmp_path, capsys):
    for args, why in ((['--weights', 'yolov5n.onnx'], 'already exported'), (['--img', '1', '2', '3'], 'one or two'),
                      (['--include', 'tflite'], 'invalid choice')):
        with pytest.raises(SystemExit) as e:
            E.parse_args(args)
        assert e.value.code == 2 and why in capsys.readouterr().err, args
    with pytest.raises(SystemExit):
        detect.parse_args(['x.jpg', '--weights', str(tmp_path / 'missing.onnx')])
    assert 'missing.onnx: no such file' in capsys.readouterr().err
    (tmp_path / 'notes.onnx').write_text('hello, not a model')
    with pytest.raises(ValueError, match='not an ONNX model'):
        E.load_any(tmp_path / 'notes.onnx')


def test_hub_reads_urls(exported, tmp_path):
    import functools
    import http.server
    import threading
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(shared(BUS).parent))
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        hub = torch.hub.load(str(ROOT), 'custom', str(exported['pt']), source='local')
        r = hub(f'http://127.0.0.1:{server.server_port}/bus.jpg')
    finally:
        server.shutdown()
    assert r.files == ['bus.jpg'] and torch.equal(r.xyxy[0], hub(str(BUS)).xyxy[0])


def test_hub_official_entry_points(exported, tmp_path, monkeypatch):
    monkeypatch.chdir(exported['pt'].parent)  # where yolov5n.pt is (elsewhere it is downloaded, as in the original)
    hub = torch.hub.load(str(ROOT), 'yolov5n', source='local', device='cpu')
    assert torch.equal(hub(str(shared(BUS))).xyxy[0], torch.hub.load(str(ROOT), 'custom', 'yolov5n.pt',
                                                                        source='local')(str(BUS)).xyxy[0])
    bare = torch.hub.load(str(ROOT), 'yolov5n', source='local', classes=3, autoshape=False)
    official = M.load_model('yolov5n.pt').state_dict()
    assert bare.nc == 3 and torch.equal(bare.state_dict()['model.0.conv.weight'], official['model.0.conv.weight'])
    assert bare.detect.m[0].weight.shape[0] == 3 * 8  # a new head: 3 anchors x (5 + 3 classes)
    with pytest.raises(ValueError, match='3-channel'):
        torch.hub.load(str(ROOT), 'yolov5n', source='local', channels=1)
# ------------------------------------------------------------------------------------ odd and hostile inputs (issue 18)

def corrupt_member_zip():
    """A zip whose member d/a.txt fails its CRC check (the deflated bytes changed)."""
    z = bytearray(zip_bytes({'d/a.txt': b'hello world ' * 1000, 'd/b.txt': b'more'}))
    i = z.index(b'd/a.txt') + 20
    z[i:i + 30] = b'\xff' * 30
    return bytes(z)


def encrypted_zip():
    """A zip whose member says it is encrypted (zipfile cannot write one: the flag bits are set by hand)."""
    z = bytearray(zip_bytes({'d/a.txt': b'secret'}))
    for signature, offset in ((b'PK\x03\x04', 6), (b'PK\x01\x02', 8)):  # local header, central directory
        z[z.index(signature) + offset] |= 1
    return bytes(z)


def test_downloads_only_write_inside_the_datasets_folder_and_replace_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(support.downloads, 'DATASETS_DIR', tmp_path / 'datasets')
    monkeypatch.delenv('YOLO_MIRROR', raising=False)
    img = cv2.imencode('.jpg', scene(64, 64, []))[1].tobytes()
    srv = serve({'ds.zip': zip_bytes({'important.txt': b'from the zip', 'ds/images/train/a.jpg': img,
                                      '../../escaped.txt': b'zip-slip'})})
    (tmp_path / 'some' / 'dir').mkdir(parents=True)
    (tmp_path / 'some' / 'important.txt').write_text('mine')
    yaml = tmp_path / 'ds.yaml'
    yaml.write_text(f'path: {tmp_path}/some/dir/ds\ntrain: images/train\nval: images/train\n'
                    f'download: {srv.url}ds.zip\n')
    with pytest.raises(FileNotFoundError, match=f'ds.zip: not unpacked into {tmp_path}/some/dir: downloads only ever '
                                                f'write inside the datasets folder {tmp_path}/datasets'):
        support.data_yaml.data_spec(yaml)
    assert srv.requests == [] and sorted(p.name for p in (tmp_path / 'some').rglob('*')) == ['dir', 'important.txt']
    yaml.write_text(f'path: ../datasets/ds\ntrain: images/train\nval: images/train\ndownload: {srv.url}ds.zip\n')
    (tmp_path / 'yaml').mkdir()
    os.replace(yaml, tmp_path / 'yaml' / 'ds.yaml')  # inside the datasets folder: fetched, merged, nothing replaced
    (tmp_path / 'datasets').mkdir()
    (tmp_path / 'datasets' / 'important.txt').write_text('mine')
    spec = support.data_yaml.data_spec(tmp_path / 'yaml' / 'ds.yaml')
    assert [Path(x).resolve() for x in spec['train']] == [tmp_path / 'datasets/ds/images/train']
    assert (tmp_path / 'datasets' / 'important.txt').read_text() == 'mine' and 'already in' in capsys.readouterr().err
    assert (tmp_path / 'datasets' / 'escaped.txt').exists() and not list(tmp_path.glob('**/*.zip'))
    assert not (tmp_path / 'escaped.txt').exists() and not (tmp_path.parent / 'escaped.txt').exists()
    # [url, folder] pairs are the built-in datasets' only
    (tmp_path / 'yaml' / 'pairs.yaml').write_text(f'train: images/train\nval: images/train\n'
                                                  f'download: [{srv.url}ds.zip, /etc]\n')
    with pytest.raises(ValueError, match=r'pairs.yaml:3: download: .* is not the URL of a .zip'):
        support.data_yaml.data_spec(tmp_path / 'yaml' / 'pairs.yaml')


def test_download_markers_follow_url_destination_and_disk(tmp_path, monkeypatch):
    monkeypatch.setattr(support.downloads, 'DATASETS_DIR', tmp_path)
    monkeypatch.delenv('YOLO_MIRROR', raising=False)
    srv = serve({'a/data.zip': zip_bytes({'a/x.txt': b'a'}), 'b/data.zip': zip_bytes({'b/x.txt': b'b'})})
    for name in ('a', 'b'):  # two datasets that both ship a data.zip, into one folder
        support.downloads.download_zip(f'{srv.url}{name}/data.zip', tmp_path)
    assert (tmp_path / 'a/x.txt').read_text() == 'a' and (tmp_path / 'b/x.txt').read_text() == 'b'
    support.downloads.download_zip(f'{srv.url}a/data.zip', tmp_path)
    assert len(srv.requests) == 2 and support.downloads.is_downloaded(f'{srv.url}a/data.zip', tmp_path)  # done: not fetched again
    __import__('shutil').rmtree(tmp_path / 'a')  # the dataset deleted: its marker no longer holds
    assert not support.downloads.is_downloaded(f'{srv.url}a/data.zip', tmp_path)
    support.downloads.download_zip(f'{srv.url}a/data.zip', tmp_path)
    assert len(srv.requests) == 3 and (tmp_path / 'a/x.txt').read_text() == 'a'
    assert not support.downloads.is_downloaded(f'{srv.url}a/data.zip', tmp_path / 'b')  # keyed by destination too


@pytest.mark.parametrize('case', ['corrupt member', 'encrypted', 'folder clash', 'full disk'])
def test_a_zip_that_cannot_be_unpacked_leaves_nothing_half_written(tmp_path, monkeypatch, case):
    monkeypatch.setattr(support.downloads, 'DATASETS_DIR', tmp_path)
    good = zip_bytes({'d/a.txt': b'hello', 'd/sub/b.txt': b'world'})
    srv = serve({'d.zip': {'corrupt member': corrupt_member_zip(), 'encrypted': encrypted_zip()}.get(case, good)})
    monkeypatch.setenv('YOLO_MIRROR', srv.url)  # the errors name the URL actually used
    dest = tmp_path / 'ds'
    dest.mkdir()
    if case == 'folder clash':
        (dest / 'd').write_text('a file where the zip has a folder')
    if case == 'full disk':
        real = zipfile.shutil.copyfileobj

        def full(src, dst, *args):  # the disk fills up halfway through the second member
            if dst.name.endswith('b.txt'):
                dst.write(b'wor')
                raise OSError(__import__('errno').ENOSPC, 'No space left on device')
            real(src, dst, *args)
        monkeypatch.setattr(zipfile.shutil, 'copyfileobj', full)
    expected = {'corrupt member': "Bad CRC-32 for file 'd/a.txt'", 'encrypted': 'd/a.txt is encrypted',
                'folder clash': f'{dest}/d is a file where the zip has a folder', 'full disk': 'No space left'}[case]
    with pytest.raises(FileNotFoundError, match=f'{dest}/d.zip \\(from {srv.url}d.zip\\): cannot unzip it.*'
                                                f'{expected}.*'):
        support.downloads.download_zip('https://example.com/x/d.zip', dest)
    zip_kept = case in ('folder clash', 'full disk')  # the destination's fault: the zip is fine
    left = sorted(p.name for p in dest.iterdir())
    assert left == ['d'] * (case == 'folder clash') + ['d.zip'] * zip_kept, left  # no .tmp, no marker, no half file
    if not zip_kept:  # a bad zip is deleted: the next run fetches it again (and the mirror now serves a good one)
        srv.files['d.zip'] = good
        support.downloads.download_zip('https://example.com/x/d.zip', dest)
        assert (dest / 'd/sub/b.txt').read_text() == 'world' and len(srv.requests) == 2


def test_a_mirror_error_page_as_weights_is_deleted_and_ctrl_c_keeps_the_part(tmp_path, monkeypatch, capsys):
    page = b'<!DOCTYPE html><html><body>Sign in to continue</body></html>'
    srv = serve({'yolov5s.pt': page, 'blob.bin': np.random.default_rng(0).bytes(2_000_000)})
    monkeypatch.setenv('YOLO_MIRROR', srv.url)
    for _ in range(2):  # nothing is left behind: the second try fetches again
        with pytest.raises(FileNotFoundError, match=f'{srv.url}yolov5s.pt: not a valid zip archive.*DOCTYPE'):
            M.read_checkpoint(tmp_path / 'yolov5s.pt')
        assert list(tmp_path.iterdir()) == []
    assert len(srv.requests) == 2
    real = support.downloads._fetch

    def interrupted(url, part):  # Ctrl-C when half of it has come
        part.write_bytes(srv.files['blob.bin'][:1_000_000])
        raise KeyboardInterrupt
    monkeypatch.setattr(support.downloads, '_fetch', interrupted)
    with pytest.raises(SystemExit) as e:
        support.downloads.download('https://example.com/blob.bin', tmp_path / 'blob.bin')
    assert e.value.code == 130 and 'blob.bin.part keeps what came, the next run resumes' in capsys.readouterr().err
    monkeypatch.setattr(support.downloads, '_fetch', real)
    support.downloads.download('https://example.com/blob.bin', tmp_path / 'blob.bin')
    assert srv.requests[-1] == ('blob.bin', 'bytes=1000000-')
    assert (tmp_path / 'blob.bin').read_bytes() == srv.files['blob.bin']


def test_yaml_values_are_checked_by_type_and_bounded(tmp_path):
    (tmp_path / 'images').mkdir()
    cv2.imwrite(str(tmp_path / 'images' / 'a.jpg'), scene(32, 32, []))
    head = 'train: images\nval: images\n'
    for text, error in [('nc: 1000000000\n', r'c.yaml:3: nc: 1000000000 is not a number of classes from 1 to 100000'),
                        ('names:\n  999999999: x\n', 'c.yaml:3: names: 999999999 is not a class index from 0 to 99999'),
                        ('nc: 2.5\n', 'c.yaml:3: nc: 2.5 is not a number of classes'),
                        ('nc: 0\n', 'c.yaml:3: nc: 0 is not a number of classes'),
                        ('names:\n  person: 0\n', "c.yaml:3: names: 'person' is not a class index"),
                        ('names:\n  0: [a, b]\n  1:\n', r"c.yaml:3: names: \['a', 'b'\] is not a class name"),
                        ('names: person\n', "c.yaml:3: names: 'person' is not a list of names"),
                        ('names: [a, [b]]\n', r"c.yaml:3: names: \['b'\] is not a class name"),
                        ("names: ['a, 'b']\n", r"c.yaml:3: not a valid list: \['a, 'b'\]"),
                        ("names: ['a' b]\n", r"c.yaml:3: not a valid list: \['a' b\]"),
                        ("download: 'a' 'b'\n", "c.yaml:3: .* is not in the YAML read here"),
                        ('download: 5\n', 'c.yaml:3: download: 5 is not the URL of a .zip'),
                        ('path: 7.5\n', 'c.yaml:3: path: 7.5 is not a folder')]:
        (tmp_path / 'c.yaml').write_text(head + text)
        with pytest.raises(ValueError, match=error):
            support.data_yaml.data_spec(tmp_path / 'c.yaml')
    (tmp_path / 'c.yaml').write_text('train: 20.17\nval: images\n')  # (train: 2017 names the folder 2017)
    with pytest.raises(ValueError, match=r'c.yaml:1: train: 20.17 is not a path'):
        support.data_yaml.data_spec(tmp_path / 'c.yaml')
    (tmp_path / 'c.yaml').write_text('\ufeffnames: [0, 1, 2.5]\n' + head)  # a BOM first; numeric names
    assert support.data_yaml.data_spec(tmp_path / 'c.yaml')['names'] == ['0', '1', '2.5']
    (tmp_path / 'c.yaml').write_bytes(b'names: [a]\n\xff\xfe\n')
    with pytest.raises(ValueError, match='c.yaml: not UTF-8 text'):
        support.data_yaml.data_spec(tmp_path / 'c.yaml')
    import time
    blanks = ' ' * 1_000_000
    for line in ('a' + blanks, 'names: [' + blanks + 'x' + blanks, 'nc: ' + '1' * 1_000_000 + 'x'):
        (tmp_path / 'c.yaml').write_text(line + '\n')
        t0 = time.perf_counter()
        with pytest.raises(ValueError):
            support.data_yaml.data_spec(tmp_path / 'c.yaml')
        assert time.perf_counter() - t0 < 3  # linear: the old key pattern took ~30 minutes on a megabyte of blanks


def test_numeric_class_names_draw(tmp_path):
    labels = np.array([[0, 0.5, 0.5, 0.2, 0.2], [2, 0.3, 0.3, 0.1, 0.1]], np.float32)
    support.plots.plot_labels(labels, [0, 1, 2], tmp_path / 'labels.jpg')
    assert cv2.imread(str(tmp_path / 'labels.jpg')).std() > 10
    img = np.zeros((64, 64, 3), np.uint8)
    support.plots.draw_box(img, (10, 20, 40, 50), 0, (255, 255, 255), 2)  # a name 0 is drawn, not taken for no name
    assert img[10:20, 10:40].any()


def test_label_classes_too_big_shared_label_files_and_empty_caches(tmp_path, capsys):
    root = make_dataset(tmp_path / 'd', [[(0, 10, 10, 50, 50)]] * 3)
    lab = root / 'labels' / 'train'
    for single_cls in (False, True):  # classes beyond any dataset's: the dataset is refused, with --single-cls too
        for row, shown in (('1e40', r'1e\+40'), ('100000', '100000')):
            (lab / 'im1.txt').write_text(f'{row} 0.5 0.5 0.2 0.2\n')
            with pytest.raises(ValueError, match=f'im1.txt:1: class {shown} is out of range: the dataset has 3'):
                support.datasets.load_labels(support.datasets.find_images(root), nc=3, single_cls=single_cls)
    (lab / 'im1.txt').unlink()
    (lab / 'im2.txt').unlink()
    cv2.imwrite(str(root / 'images' / 'train' / 'im0.bmp'), scene(32, 32, []))
    support.datasets.load_labels(support.datasets.find_images(root), nc=3)
    assert f'im0.jpg share one label file, {lab}/im0.txt' in capsys.readouterr().err
    broken = tmp_path / 'broken'  # a scan that keeps no image, then read from its cache: 0 backgrounds, not 1
    (broken / 'images').mkdir(parents=True)
    (broken / 'labels').mkdir()
    for k in range(2):
        (broken / 'images' / f'{k}.jpg').write_bytes(b'not an image')
    for how in ('Scanned', 'Cached'):
        with pytest.raises(ValueError, match='no usable images'):
            support.datasets.load_labels(support.datasets.find_images(broken / 'images'), nc=3)
        assert f'{how} {broken}/labels: 0 images, 0 backgrounds, 2 corrupt, 0 instances' in capsys.readouterr().out


def write_in_every_format(folder, name, img):
    """img (BGR) as name_<ext>.<ext> in every IMAGE_EXTS format that OpenCV or Pillow writes; the files written."""
    from PIL import Image
    rgb = Image.fromarray(img[:, :, ::-1].copy())
    files = []
    for ext in sorted(support.datasets.IMAGE_EXTS):
        path = str(folder / f'{name}_{ext[1:]}{ext}')
        if ext == '.dng':  # no writer for it in either
            continue
        if ext == '.mpo':
            rgb.save(path, 'MPO')
        else:  # .pfm holds float pixels, which OpenCV reads back as 8 bits
            assert cv2.imwrite(path, img.astype(np.float32) if ext == '.pfm' else img), ext
        files.append(path)
    return files


def test_every_image_format_that_can_be_written_is_scanned_and_trains(tmp_path, capsys):
    from PIL import Image
    root = tmp_path / 'ds'
    for split in ('train', 'val'):
        (root / 'images' / split).mkdir(parents=True)
        (root / 'labels' / split).mkdir(parents=True)
    img = scene(128, 160, [(40, 30, 100, 90)])  # 160 wide: training at --img 64 decodes them at half size
    files = write_in_every_format(root / 'images' / 'train', 'im', img)
    exts = {Path(f).suffix for f in files}
    assert exts == support.datasets.IMAGE_EXTS - {'.dng'}, exts
    rotated = Image.Exif()
    rotated[274] = 6  # EXIF: turned 90 degrees, which OpenCV applies when it decodes
    for ext, kind in (('.png', 'PNG'), ('.jpg', 'JPEG'), ('.webp', 'WEBP'), ('.tif', 'TIFF')):  # OpenCV 4.14 cannot
        Image.fromarray(img[:, :, ::-1]).save(root / 'images' / 'val' / f'r_{kind}{ext}', kind, exif=rotated.tobytes())
    for split in ('train', 'val'):
        for f in (root / 'images' / split).iterdir():
            (root / 'labels' / split / f'{f.stem}.txt').write_text('1 0.4375 0.46875 0.375 0.46875\n')
    scanned, sizes, _ = support.datasets.load_labels(support.datasets.find_images(root / 'images' / 'val'), nc=3)  # decode a turned TIFF: left out
    assert 'r_TIFF.tif: ignoring corrupt image/label: not an image that OpenCV decodes' in capsys.readouterr().err
    assert len(scanned) == 3 and [tuple(s) for s in sizes] == [(128, 160)] * 3  # turned, as cv2.imread decodes them
    assert all(cv2.imread(f).shape[1::-1] == tuple(s) for f, s in zip(scanned, sizes))
    scanned, sizes, _ = support.datasets.load_labels(support.datasets.find_images(root / 'images' / 'train'), nc=3)
    assert sorted(scanned) == sorted(files) and [tuple(s) for s in sizes] == [(160, 128)] * len(files)
    (root / 'data.yaml').write_text('path: .\ntrain: images/train\nval: images/val\nnames: [0, 1, 2]\n')  # numbers
    trainer = T.Trainer(T.parse_args(['--weights', '', '--cfg', 'n', '--data', str(root / 'data.yaml'), '--img',
                                      '64', '--batch', '4', '--epochs', '1', '--workers', '0', '--noautoanchor',
                                      '--project', str(tmp_path / 'runs')]))
    run = trainer.fit()
    assert [r['epoch'] for r in last_results(run)] == [0] and 'cannot decode' not in capsys.readouterr().err
    for i, f in enumerate(trainer.train_set.files):  # each decoded as training does (at half size), pixels and all
        pixels = trainer.train_set.load_image(i)[0]
        expected = cv2.resize(img, pixels.shape[1::-1], interpolation=cv2.INTER_AREA)
        assert np.abs(pixels.astype(int) - expected).mean() < 8, f
    assert torch.load(run / 'weights/last.pt', weights_only=True)['config']['names'] == ['0', '1', '2']
    for picture in ('labels.jpg', 'train_batch0.jpg', 'confusion_matrix.png'):
        assert cv2.imread(str(run / picture)) is not None, picture


def test_hand_made_checkpoint_metadata_is_a_clear_error(tmp_path):
    net = M.YOLOv5('n', nc=2, names=['a', 'b'])
    good = dict(model=net.state_dict(), config=net.config())
    for change, error in [(dict(scale='q'), "scale 'q' is not one of n, s, m, l, x"),
                          (dict(scale=[0.33]), r'scale \[0.33\] is not'),
                          (dict(scale=[0.33, 0]), r'scale \[0.33, 0\] is not'),
                          (dict(nc=2.5), 'nc 2.5 is not a number of classes'),
                          (dict(names=['a']), '1 class names for its 2 classes'),
                          (dict(names=None), 'no class names for its 2 classes'),
                          (dict(model=[1, 2]), 'its weights are not a dict of tensors')]:
        torch.save({**good, **change} if 'model' in change else {**good, 'config': {**good['config'], **change}},
                   tmp_path / 'hand.pt')
        for fn in (M.read_checkpoint, M.load_model):
            with pytest.raises(ValueError, match=f'{tmp_path}/hand.pt: ({error})'):
                fn(tmp_path / 'hand.pt')
    torch.save({**good, 'config': {**good['config'], 'names': [0, 1]}}, tmp_path / 'hand.pt')  # numbers as names: fine, as text
    assert M.load_model(tmp_path / 'hand.pt').names == ['0', '1']


def test_run_folders_are_claimed_atomically(tmp_path):
    import threading
    barrier, claimed = threading.Barrier(8), []

    def start():
        barrier.wait()  # all at the same instant
        claimed.append(support.runs.run_dir(tmp_path / 'runs', 'exp'))
    threads = [threading.Thread(target=start) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(p.name for p in claimed) == sorted(['exp'] + [f'exp{n}' for n in range(2, 9)])
    assert all(p.is_dir() for p in claimed)
    assert support.runs.run_dir(tmp_path / 'runs', 'exp', exist_ok=True) == tmp_path / 'runs' / 'exp'


class _Pwned:
    """Unpickled by a reader that runs code, it would create the file at path."""
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return open, (self.path, 'w')


def test_resume_refuses_what_is_not_a_run_and_survives_a_damaged_results_csv(tmp_path, monkeypatch, capsys):
    marker = tmp_path / 'ran'
    torch.save({'epoch': 1, 'opt': {}, 'x': _Pwned(str(marker))}, tmp_path / 'evil.pt')
    (tmp_path / 'damaged.pt').write_bytes(zip_bytes({'archive/data.pkl': b'\x80\x02garbage', 'archive/version': b'3'}))
    for path, why in [(shared(WEIGHTS), 'needs code to load'), (tmp_path / 'evil.pt', 'open, which needs code'),
                      (tmp_path / 'damaged.pt', 'damaged')]:
        with pytest.raises(SystemExit, match=f'--resume {path}: not the last.pt of a training run: .*{why}'):
            T.Trainer(T.parse_args(['--resume', str(path)]))
    assert not marker.exists()
    root = make_shapes_dataset(tmp_path / 'shapes', n_train=8, n_val=4, size=64)
    args = lambda project: T.parse_args(['--weights', '', '--data', str(root), '--names', str(root / 'names.txt'),
                                         '--img', '64', '--batch', '8', '--epochs', '3', '--workers', '0', '--noval',
                                         '--noautoanchor', '--project', str(tmp_path / project)])
    real = T.set_epoch

    def interrupt_at(epoch):
        def set_epoch(loader, e):
            if e == epoch:
                raise KeyboardInterrupt
            real(loader, e)
        return set_epoch
    monkeypatch.setattr(T, 'set_epoch', interrupt_at(0))  # before the first epoch ends: nothing to resume
    with pytest.raises(SystemExit):
        T.Trainer(args('early')).fit()
    out = capsys.readouterr().out
    assert 'Interrupted: no epoch completed, nothing to resume' in out and '--resume' not in out
    monkeypatch.setattr(T, 'set_epoch', interrupt_at(1))
    with pytest.raises(SystemExit):
        T.Trainer(args('cut')).fit()
    monkeypatch.setattr(T, 'set_epoch', real)
    for damage, name in ((lambda text: '', 'empty'), (lambda text: text[:12], 'cut')):
        run = tmp_path / f'{name} results'
        __import__('shutil').copytree(tmp_path / 'cut' / 'exp', run)
        (run / 'results.csv').write_text(damage((run / 'results.csv').read_text()))
        T.Trainer(T.parse_args(['--resume', str(run / 'weights/last.pt'), '--workers', '0'])).fit()
        assert [r['epoch'] for r in last_results(run)] == [1, 2], name


def test_a_start_that_fails_leaves_no_run_folder(tmp_path, monkeypatch):
    root = make_shapes_dataset(tmp_path / 'shapes', n_train=4, n_val=2, size=64)
    (root / 'bad.yaml').write_text('path: .\ntrain: images/train\nval: images/val\nnc: 2.5\n')
    with pytest.raises(SystemExit, match='bad.yaml:4: nc: 2.5 is not a number of classes'):
        T.Trainer(T.parse_args(['--weights', '', '--data', str(root / 'bad.yaml'), '--project',
                                str(tmp_path / 'runs')]))
    assert list((tmp_path / 'runs').iterdir()) == []

    def ctrl_c(*args, **kwargs):  # Ctrl-C while the dataset is read
        raise KeyboardInterrupt
    monkeypatch.setattr(T, 'train_dataset', ctrl_c)
    with pytest.raises(SystemExit) as e:
        T.Trainer(tiny_args(root, tmp_path / 'runs'))
    assert e.value.code == 130 and list((tmp_path / 'runs').iterdir()) == []


# ---------- hardware paths: precision by measurement, the CUDA code run on the CPU, GPU runs that do not break (issue 19)
import time  # noqa: E402
import types  # noqa: E402
from datetime import timedelta  # noqa: E402
from functools import partial  # noqa: E402


def fake_gpus(monkeypatch, n):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: n)
    monkeypatch.delenv('LOCAL_RANK', raising=False)


def test_amp_auto_picks_16_bits_only_where_they_are_faster(monkeypatch):
    cpu, cuda = torch.device('cpu'), torch.device('cuda', 0)
    monkeypatch.setattr(torch.cpu, '_is_avx512_bf16_supported', lambda: True)  # bf16 instructions, no AMX: slower
    monkeypatch.setattr(torch.cpu, '_is_amx_tile_supported', lambda: False)
    assert support.cli.amp_choice(cpu) == (None, 'auto: this CPU has no AMX, where bf16 is slower than fp32')
    assert support.cli.half_dtype(cpu) is None and support.cli.amp_choice(cuda) == (torch.float16, 'auto: CUDA')
    monkeypatch.setattr(torch.cpu, '_is_amx_tile_supported', lambda: True)
    assert support.cli.amp_choice(cpu) == (torch.bfloat16, 'auto: this CPU has AMX') and support.cli.half_dtype(cpu) == torch.bfloat16
    assert support.cli.amp_choice(cpu, 'fp16') == (torch.float16, '--amp fp16') and support.cli.amp_choice(cuda, 'off')[0] is None
    assert [T.parse_args(a).amp for a in ([], ['--no-amp'], ['--amp', 'bf16'])] == ['auto', 'off', 'bf16']


def test_fp16_with_loss_scaling_on_the_cpu_skips_overflows_and_resumes_its_scale(tmp_path, monkeypatch, capsys):
    """--amp fp16 on the CPU runs CUDA's path: fp16 autocast and GradScaler. Its first scale is so high that the first
    steps overflow: they are skipped, the scale backs off, and a resumed run continues from that scale."""
    root = make_shapes_dataset(tmp_path / 'shapes', n_train=8, n_val=2, size=64)
    monkeypatch.setattr(torch.amp, 'GradScaler', partial(torch.amp.GradScaler, init_scale=2.0 ** 19))
    norms = []
    clip = torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(torch.nn.utils, 'clip_grad_norm_', lambda *a, **k: norms.append(float(clip(*a, **k))))
    real = T.set_epoch

    def interrupt_at_epoch_1(loader, epoch):
        if epoch == 1:
            raise KeyboardInterrupt
        real(loader, epoch)
    monkeypatch.setattr(T, 'set_epoch', interrupt_at_epoch_1)
    try:
        cut = T.Trainer(T.parse_args(['--weights', '', '--data', str(root), '--names', str(root / 'names.txt'),
                                      '--img', '64', '--batch', '4', '--epochs', '2', '--workers', '0', '--noval',
                                      '--noautoanchor', '--hyp', 'nbs=4', '--amp', 'fp16', '--project', str(tmp_path)]))
        assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
        assert os.environ['CUBLAS_WORKSPACE_CONFIG'] == ':4096:8'
        with pytest.raises(SystemExit):
            cut.fit()
        out = capsys.readouterr().out
        assert 'AMP: mixed precision training in torch.float16 with loss scaling (--amp fp16)' in out
        last = tmp_path / 'exp/weights/last.pt'
        saved = torch.load(last, weights_only=True)
        assert saved['epoch'] == 0 and saved['scaler']['scale'] < 2.0 ** 19  # overflows in epoch 0: backed off
        assert all(v.isfinite().all() for v in saved['model'].values())  # their steps skipped
        monkeypatch.setattr(T, 'set_epoch', real)
        resumed = T.Trainer(T.parse_args(['--resume', str(last), '--workers', '0']))
        assert resumed.amp == torch.float16 and resumed.scaler.state_dict() == saved['scaler']
        resumed.fit()
    finally:
        torch.use_deterministic_algorithms(False)
    assert len(norms) == 4 and any(not np.isfinite(n) for n in norms) and np.isfinite(norms[-1])
    assert max(n for n in norms if np.isfinite(n)) < 1e3  # clipped unscaled: the scaled gradients are 2**16 larger
    assert [r['epoch'] for r in last_results(tmp_path / 'exp')] == [0, 1]


def test_each_torchrun_process_takes_its_own_gpu_of_the_list(monkeypatch):
    fake_gpus(monkeypatch, 4)
    cuda = lambda i: torch.device('cuda', i)
    assert support.cli.select_device('2,3', local_rank=0) == cuda(2) and support.cli.select_device('2,3', local_rank=1) == cuda(3)
    assert support.cli.select_device('', local_rank=3) == cuda(3) and support.cli.select_device('cuda:1') == cuda(1)
    assert support.cli.select_device('1,2') == cuda(1)  # one process: the first (train.py starts one per GPU first)
    monkeypatch.setenv('LOCAL_RANK', '1')
    assert support.cli.select_device('2,3') == cuda(3)
    with pytest.raises(ValueError, match='2 GPU.* for more processes .*LOCAL_RANK 2.*--nproc_per_node 2'):
        support.cli.select_device('0,1', local_rank=2)


def test_start_process_sets_the_gpu_and_waits_3_hours(monkeypatch):
    fake_gpus(monkeypatch, 4)
    current, calls = [], {}
    monkeypatch.setattr(torch.cuda, 'set_device', current.append)
    device = support.runs.start_process('1', ddp=False)  # one process: GPU 1 made the current one
    assert device == current[-1] == torch.device('cuda', 1)
    monkeypatch.setenv('LOCAL_RANK', '1')  # under torchrun, the second process on this machine
    monkeypatch.setattr(T.dist, 'rendezvous', lambda url, **kw: iter([(calls.setdefault('store', kw), 1, 2)]))
    monkeypatch.setattr(T.dist, 'PrefixStore', lambda prefix, store: store)
    monkeypatch.setattr(T.dist, 'init_process_group', lambda backend, **kw: calls.update(backend=backend, **kw))
    device = support.runs.start_process('2,3', ddp=True)
    assert device == current[-1] == torch.device('cuda', 3)
    assert calls['backend'] == 'nccl' and calls['timeout'] == calls['store']['timeout'] == timedelta(hours=3)


def test_one_process_with_several_gpus_runs_the_same_command_under_torchrun(tmp_path, monkeypatch, capsys):
    fake_gpus(monkeypatch, 2)
    started = []
    monkeypatch.setattr(T.os, 'execv', lambda path, cmd: started.append((path, cmd)) or sys.exit(0))
    monkeypatch.setattr(T, 'Trainer', lambda opt: started.append(opt.device) or types.SimpleNamespace(fit=lambda: 0))
    argv = ['--data', str(tmp_path), '--device', '0,1', '--batch', '16', '--epochs', '3']
    with pytest.raises(SystemExit):
        T.main(argv)
    assert started == [(sys.executable, [sys.executable, '-m', 'torch.distributed.run', '--standalone',
                                         '--nproc_per_node', '2', T.__file__, *argv])]
    assert '2 GPUs, one process each (DDP)' in capsys.readouterr().out
    T.main(['--data', str(tmp_path), '--device', '1'])  # one GPU: this process trains
    assert started[1:] == ['1']
    for bad, why in ((['--batch', '15'], 'not a multiple of the number of processes (2)'),
                     (['--val-only'], 'argument --val-only: one process only')):
        with pytest.raises(SystemExit) as e:
            T.main(['--device', '0,1', *bad])
        assert e.value.code == 2 and why in capsys.readouterr().err


def test_nms_time_limit_starts_when_the_gpu_has_finished(monkeypatch):
    waited = []

    def slow_gpu(device):  # the forward still runs on the GPU for a second, more than the time limit of 8 images
        waited.append(device)
        time.sleep(1.0)
        return time.perf_counter()
    monkeypatch.setattr(M, 'clock', slow_gpu)
    pred = torch.zeros(8, 3, 7)
    pred[:, :, :4] = torch.tensor([[20.0, 20, 10, 10], [60, 60, 10, 10], [100, 100, 10, 10]])
    pred[:, :, 4:] = 0.9
    out = M.non_max_suppression(pred)
    assert waited == [pred.device] and [len(o) for o in out] == [3] * 8  # no image left without its boxes
    synced = []
    monkeypatch.setattr(torch.cuda, 'synchronize', lambda device: synced.append(device) or time.sleep(0.2))
    t = time.perf_counter()
    assert support.cli.clock(torch.device('cuda', 1)) - t >= 0.2 and synced == [torch.device('cuda', 1)]
    assert support.cli.clock(torch.device('cpu')) - t < 0.2 + 0.1 and len(synced) == 1


def test_the_nosave_copy_is_a_cpu_copy_apart_from_the_live_state():
    w = torch.nn.Parameter(torch.ones(3))
    state = dict(epoch=1, model={'w': w}, optimizer=dict(state={0: dict(buf=torch.zeros(2))}, groups=[dict(lr=0.1)]),
                 scale=(0.33, 0.25), names=['a'])
    copy = support.checkpoints.to_cpu(state)
    with torch.no_grad():
        w.add_(1)
    state['optimizer']['state'][0]['buf'].add_(1)
    state['optimizer']['groups'][0]['lr'] = 0.2
    assert torch.equal(copy['model']['w'], torch.ones(3)) and not copy['model']['w'].requires_grad
    assert torch.equal(copy['optimizer']['state'][0]['buf'], torch.zeros(2))
    assert copy['optimizer']['groups'][0]['lr'] == 0.1
    assert copy['scale'] == (0.33, 0.25) and copy['names'] == ['a'] and copy['epoch'] == 1
    assert all(t.device.type == 'cpu' for t in (copy['model']['w'], copy['optimizer']['state'][0]['buf']))


OOM = torch.OutOfMemoryError('CUDA out of memory. Tried to allocate 20.00 GiB')


def raise_oom(*args, **kwargs):
    raise OOM


@pytest.mark.parametrize('where', ['setup', 'amp check', 'epoch', 'final validation', 'val-only'])
def test_out_of_memory_anywhere_is_one_clear_message(tmp_path, monkeypatch, where):
    target = {'setup': (T, 'make_optimizer'), 'amp check': (support.cli, 'amp_agrees'), 'epoch': (T.Trainer, 'train_epoch'),
              'final validation': (T.Trainer, 'finish'), 'val-only': (T, 'validate')}[where]
    monkeypatch.setattr(*target, raise_oom)
    if where == 'val-only':
        args = ['--val-only', '--weights', str(shared(WEIGHTS)), '--data', str(shared(COCO128))]
    else:
        root = make_shapes_dataset(tmp_path / 'shapes', n_train=8, n_val=2, size=64)
        args = ['--weights', '', '--data', str(root), '--names', str(root / 'names.txt'), '--epochs', '1', '--workers',
                '0', '--noautoanchor', '--amp', 'fp16' if where == 'amp check' else 'off']
    try:
        with pytest.raises(SystemExit, match=r'^ERROR: out of GPU memory at --batch 8 --img 64: lower --batch '
                                             r'\(e.g. --batch 4\) or --img'):
            T.main([*args, '--img', '64', '--batch', '8', '--project', str(tmp_path / 'runs')])
    finally:
        torch.use_deterministic_algorithms(False)


# ---------- loader speed and colour order (issues 20, 17)
def mosaic_the_plain_way(ds, epoch, index):
    """A mosaic sample made the way the loader made it before issue 20, step by step: all four images decoded onto a
    whole 2s x 2s canvas, the whole canvas warped, HSV by OpenCV's round trip with one 3-channel table, BGR to RGB."""
    s, hyp = ds.img_size, ds.hyp
    rng = np.random.default_rng([ds.seed, epoch, index])
    assert rng.random() < hyp['mosaic']
    xc, yc = (int(v) for v in rng.uniform(s // 2, 2 * s - s // 2, 2))
    indices = [index] + [int(i) for i in rng.integers(0, len(ds), 3)]
    rng.shuffle(indices)
    canvas, labels = np.full((2 * s, 2 * s, 3), 114, np.uint8), []
    for k, i in enumerate(indices):
        img = ds.load_image(i)[0]
        h, w = img.shape[:2]
        x, y = (xc - w if k % 2 == 0 else xc), (yc - h if k < 2 else yc)  # its top left: it touches the centre
        canvas[max(y, 0):y + h, max(x, 0):x + w] = img[max(-y, 0):2 * s - y, max(-x, 0):2 * s - x]
        lb = ds.labels[i].copy()
        lb[:, 1:] = support.datasets.xywh2xyxy(lb[:, 1:]) * (w, h, w, h) + (x, y, x, y)
        labels.append(lb)
    labels = np.concatenate(labels)
    labels[:, 1:] = labels[:, 1:].clip(0, 2 * s)
    M, scale = data.random_matrix(rng, hyp, canvas.shape, (s, s))
    img = cv2.warpAffine(canvas, M[:2], (s, s), borderValue=(114, 114, 114))
    labels = data.warp(canvas, labels, M, scale, (s, s))[1]
    assert rng.random() >= hyp['mixup'] and rng.random() >= hyp['crop']
    img = data.photometric(img, rng, hyp)
    r = rng.uniform(-1, 1, 3) * (hyp['hsv_h'], hyp['hsv_s'], hyp['hsv_v']) + 1
    x = np.arange(256)
    lut = np.stack(((x * r[0]) % 180, np.clip(x * r[1], 0, 255), np.clip(x * r[2], 0, 255)), 1).astype(np.uint8)
    img = cv2.cvtColor(cv2.LUT(cv2.cvtColor(img, cv2.COLOR_BGR2HSV), lut[None]), cv2.COLOR_HSV2BGR)[:, :, ::-1]
    labels = labels.astype(np.float32)
    labels[:, 1:] = data.xyxy2xywh(labels[:, 1:].clip(0, (s, s, s, s))) / (s, s, s, s)  # (in float64, as the loader)
    labels = labels[(labels[:, 3] > 1e-3) & (labels[:, 4] > 1e-3)]
    if rng.random() < hyp['flipud']:
        img, labels[:, 2] = img[::-1], 1 - labels[:, 2]
    if rng.random() < hyp['fliplr']:
        img, labels[:, 1] = img[:, ::-1], 1 - labels[:, 1]
    return img, labels


def test_mosaic_equals_the_whole_canvas_way_bit_for_bit(monkeypatch):
    """The loader builds only the part of the canvas that the warp reads and skips decoding images outside it. Bit for
    bit, not within a grey level: the window is the same canvas cut at whole pixels (the warp's inverse map moves by an
    integer, so it reads the same pixels with the same fixed-point weights), and a skipped image has no pixel in it."""
    ds = data.YOLODataset(shared(COCO128), 640, augment=True, hyp=data.AUG)
    decodes, load_image = [], ds.load_image
    monkeypatch.setattr(ds, 'load_image', lambda i: decodes.append(i) or load_image(i))
    for hyp in (data.AUG, dict(data.AUG, degrees=10, shear=5)):  # an axis-aligned warp; a rotated and sheared one
        ds.hyp, counts = hyp, []
        for index in range(0, 128, 16):
            decodes.clear()
            img, labels, _, _ = ds[(1, index)]
            counts.append(len(decodes))
            ref, ref_labels = mosaic_the_plain_way(ds, 1, index)
            assert torch.equal(img.permute(1, 2, 0), torch.from_numpy(ref.copy())), (hyp, index)
            assert np.array_equal(labels[:, 1:].numpy(), ref_labels), (hyp, index)
        assert min(counts) < 4 and max(counts) == 4, counts  # some images were out of view, and not decoded


def test_training_tensors_are_rgb(tmp_path):
    """Pure red images come out with red in channel 0 (the model's RGB) with every augmentation on, with the HSV gains
    at 0, and without augmentation: the colour order changes at one place, whatever the pipeline does before it."""
    for d in ('images', 'labels'):
        (tmp_path / d).mkdir()
    for k in range(4):
        cv2.imwrite(str(tmp_path / 'images' / f'{k}.jpg'), np.full((96, 128, 3), (0, 0, 255), np.uint8))  # BGR red
        (tmp_path / 'labels' / f'{k}.txt').write_text('0 0.5 0.5 0.5 0.5\n')
    no_gray = dict(data.AUG, to_gray=0.0)  # (a grey image has no colour order to check)
    for kwargs in (dict(augment=True, hyp=no_gray), dict(augment=True, hyp=dict(no_gray, hsv_h=0, hsv_s=0, hsv_v=0)),
                   dict(augment=False)):
        ds = data.YOLODataset(tmp_path / 'images', 128, **kwargs)
        for i in range(len(ds)):
            img = ds[i][0].float()
            red = (img[0] - torch.maximum(img[1], img[2])).mean()  # grey padding adds 0
            assert red > 20 and (img[0] >= img[1]).all() and (img[0] >= img[2]).all(), (kwargs, i, red)


# ---------- the original's everyday commands: sources, crops, TTA, COCO JSON, --task, hyp files, P6 (issue 22)

def bus_clip(path, n=6, fps=10):
    """A short mp4 of bus.jpg at 240x180 sliding sideways: the people in it are found in every frame."""
    bus = cv2.resize(cv2.imread(str(shared(BUS))), (180, 240), interpolation=cv2.INTER_AREA)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*'mp4v'), fps, (180, 240))
    frames = [np.roll(bus, 4 * i, axis=1) for i in range(n)]
    for frame in frames:
        writer.write(frame)
    writer.release()
    return frames


def read_video(path):
    cap, frames = cv2.VideoCapture(str(path)), []
    while (frame := cap.read()[1]) is not None:
        frames.append(frame)
    return frames


def test_detect_an_http_stream_annotates_every_frame(tmp_path, capsys):
    frames = bus_clip(tmp_path / 'clip.mp4')
    server = serve({'clip.mp4': (tmp_path / 'clip.mp4').read_bytes()})
    url = server.url + 'clip.mp4'
    r = run_detect('--source', url, '--weights', WEIGHTS, '--img', 256, '--save-txt', cwd=tmp_path)
    assert r.returncode == 0 and 'Traceback' not in r.stderr, r.stderr
    assert [line.split(') ')[0] for line in r.stdout.splitlines() if url in line] == \
        [f'video 1/1 (frame {i}/6' for i in range(1, 7)]
    out = read_video(tmp_path / 'runs/detect/exp/clip.mp4')  # playable, every frame there, each with its boxes
    assert len(out) == 6 and all(np.abs(o.astype(int) - f).mean() > 3 for o, f in zip(out, frames))
    labels = sorted(p.name for p in (tmp_path / 'runs/detect/exp/labels').iterdir())
    assert labels == [f'clip_{i}.txt' for i in range(1, 7)]
    # --vid-stride 2 keeps frames 2, 4, 6, as the original; a .streams file lists sources, one a line
    (tmp_path / 'list.streams').write_text(f'{url}\n{shared(BUS)}\n')
    opt = detect.parse_args([str(tmp_path / 'list.streams'), '--weights', str(WEIGHTS), '--img', '256',
                             '--vid-stride', '2', '--save-txt', '--nosave', '--project', str(tmp_path / 'runs/detect')])
    assert detect.run(opt) == 0
    out = capsys.readouterr().out
    assert f'video 1/2 (frame 3/3) {url}' in out and 'image 2/2 ' in out
    stride_2 = read_labels(tmp_path / 'runs/detect/exp2/labels/clip_1.txt')
    assert np.array_equal(stride_2, read_labels(tmp_path / 'runs/detect/exp/labels/clip_2.txt'))


def test_detect_stops_on_ctrl_c_with_a_playable_video(tmp_path):
    import signal
    path = tmp_path / 'long.mp4'
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*'mp4v'), 10, (96, 64))
    for i in range(300):
        writer.write(scene(64, 96, [(5 + i % 40, 10, 40 + i % 40, 50)], seed=i % 7))
    writer.release()
    p = subprocess.Popen([sys.executable, str(ROOT / 'detect.py'), path, '--weights', WEIGHTS, '--img', '96'],
                         cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    while len(lines) < 3:
        lines.append(p.stdout.readline())
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=120)
    done = len(lines) + sum('(frame ' in line for line in out.splitlines())
    assert p.returncode == 130 and 'Interrupted (Ctrl-C)' in err and 'Traceback' not in err, err
    assert 3 <= done < 300 and len(read_video(tmp_path / 'runs/detect/exp/long.mp4')) == done


def test_detect_webcams_and_streams_that_do_not_open_and_view_img(tmp_path):
    r = run_detect('0', 'rtsp://127.0.0.1:9/live', '--weights', WEIGHTS, '--view-img', cwd=tmp_path)
    assert r.returncode == 1 and 'Traceback' not in r.stderr
    assert 'ERROR: 0: cannot open stream' in r.stderr
    assert 'ERROR: rtsp://127.0.0.1:9/live: cannot open stream' in r.stderr
    assert '--view-img: opencv-python-headless' in r.stderr
    with pytest.raises(SystemExit) as e:
        detect.parse_args([])
    assert e.value.code == 2


def test_same_named_inputs_glob_characters_and_formats_opencv_cannot_write(tmp_path, capsys):
    """Issue 18: outputs of same-named inputs are img.jpg, img2.jpg (as YOLOv5 names run folders and crops), each with
    its labels; an existing photo[1].jpg is that file, not a glob; .mpo and .dng are saved as .jpg; a failed save is
    reported and the run goes on."""
    bus = cv2.resize(cv2.imread(str(shared(BUS))), (240, 320))
    for name, img in [('a/img.jpg', bus), ('b/img.jpg', bus[:, ::-1]), ('photo[1].jpg', bus)]:
        (tmp_path / name).parent.mkdir(exist_ok=True)
        cv2.imwrite(str(tmp_path / name), img)
    cv2.imwrite(str(tmp_path / 'x.jpg'), bus)
    (tmp_path / 'x.jpg').rename(tmp_path / 'x.mpo')  # an MPO is a JPEG with more pictures after it
    cv2.imwrite(str(tmp_path / 'y.tif'), bus)
    (tmp_path / 'y.tif').rename(tmp_path / 'y.dng')  # a DNG is a TIFF
    inputs = ['a/img.jpg', 'b/img.jpg', 'photo[1].jpg', 'x.mpo', 'y.dng']
    r = run_detect(*inputs, '--weights', WEIGHTS, '--img', 320, '--save-txt', cwd=tmp_path)
    assert r.returncode == 0 and '5 labels saved' in r.stdout, r.stderr
    run = tmp_path / 'runs/detect/exp'
    assert sorted(p.name for p in run.glob('*.jpg')) == ['img.jpg', 'img2.jpg', 'photo[1].jpg', 'x.jpg', 'y.jpg']
    for out, own, other in [('img.jpg', bus, bus[:, ::-1]), ('img2.jpg', bus[:, ::-1], bus)]:  # each its own input's
        diff = lambda img: np.median(np.abs(cv2.imread(str(run / out)).astype(int) - img))
        assert diff(own) < 5 < diff(other)
    assert not np.array_equal(read_labels(run / 'labels/img.txt'), read_labels(run / 'labels/img2.txt'))
    (run / 'x.jpg').unlink()
    (run / 'x.jpg').mkdir()  # x.mpo's output cannot be written now
    t = (run / 'photo[1].jpg').stat().st_mtime
    opt = detect.parse_args([str(tmp_path / 'x.mpo'), str(tmp_path / 'photo[1].jpg'), '--weights', str(WEIGHTS),
                             '--img', '320', '--project', str(tmp_path / 'runs/detect'), '--exist-ok'])
    assert detect.run(opt) == 0
    out, err = capsys.readouterr()
    assert 'x.jpg: cannot save' in err and 'image 2/2 ' in out and (run / 'photo[1].jpg').stat().st_mtime > t


def test_save_crop_writes_the_originals_crops(tmp_path):
    r = run_detect(shared(BUS), '--weights', WEIGHTS, '--save-crop', '--nosave', cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    crops = tmp_path / 'runs/detect/exp/crops'
    shapes = {str(p.relative_to(crops)): cv2.imread(str(p)).shape[:2] for p in crops.glob('*/*.jpg')}
    assert shapes == {'bus/bus.jpg': (574, 800), 'person/bus.jpg': (337, 77), 'person/bus2.jpg': (475, 143),  # the
                      'person/bus3.jpg': (535, 134), 'person/bus4.jpg': (510, 169)}  # original's, in its order
    assert not (tmp_path / 'runs/detect/exp/bus.jpg').exists()


# The original's test-time augmentation on bus.jpg (yolov5n, 640): detect.py --augment --save-txt --save-conf, and the
# raw merged output of the 640x480 letterboxed image (shape, sum, objectness sum)
TTA_BUS = [(36, 0.911728, 0.791667, 0.174074, 0.05, 0.507159), (0, 0.0444444, 0.678704, 0.0888889, 0.296296, 0.519067),
           (0, 0.92284, 0.583796, 0.154321, 0.456481, 0.761548), (5, 0.489506, 0.462963, 0.954321, 0.537037, 0.76207),
           (0, 0.348148, 0.587963, 0.153086, 0.418519, 0.795765), (0, 0.162346, 0.590741, 0.218519, 0.47963, 0.870583)]


def test_test_time_augmentation_matches_the_original(tmp_path, yolov5n):
    r = run_detect('--source', shared(BUS), '--weights', WEIGHTS, '--augment', '--save-txt', '--save-conf',
                   cwd=tmp_path)
    assert r.returncode == 0 and '4 persons, 1 bus, 1 skateboard' in r.stdout, r.stderr
    assert match_rows(read_labels(tmp_path / 'runs/detect/exp/labels/bus.txt'), np.array(TTA_BUS)) < 0.002
    x = data.to_tensor(data.letterbox(cv2.imread(str(BUS)), 640)[0]).float()[None] / 255
    y = next(M.predict(yolov5n, x, augment=True))[0]
    assert y.shape == (1, 34233, 85) and abs(y.double().sum().item() / 22822310.744 - 1) < 1e-6
    assert abs(y[..., 4].double().sum().item() - 136.6395) < 1e-3
    # validation with it: other detections than without, boxes on the image all the same
    root = make_dataset(tmp_path / 'ds', [[(0, 20, 30, 90, 120)], [(1, 40, 40, 100, 140)]])
    opt = T.parse_args(['--val-only', '--weights', str(WEIGHTS), '--data', str(root), '--img', '160', '--batch', '2',
                        '--save-json', '--project', str(tmp_path / 'val')])
    T.run_val_only(opt)
    opt.augment = True
    T.run_val_only(opt)
    plain, augmented = (__import__('json').loads(p.read_text()) for p in sorted((tmp_path / 'val').glob('*/*.json')))
    assert plain != augmented and all(0 <= b <= 160 for r in augmented for b in r['bbox'][:2])


# The original's val.py --save-json (yolov5n, 640) on 8 COCO128 images laid out as COCO (coco/val2017.txt): detections
# per image, and those with score >= 0.3 (image_id, category_id, x, y, w, h, score)
COCO_JSON_COUNTS = {9: 300, 25: 43, 30: 64, 34: 17, 36: 172, 42: 300, 49: 300, 61: 166}
COCO_JSON_TOP = [
    (34, 24, 11.434, 22.042, 425.922, 370.904, 0.89869), (25, 25, 358.059, 63.635, 245.535, 299.711, 0.86503),
    (30, 86, 239.662, 151.854, 166.8, 199.39, 0.58933), (30, 64, 194.032, 38.675, 272.839, 312.024, 0.3127),
    (9, 56, 252.78, 229.293, 322.441, 247.148, 0.60045), (9, 51, 355.019, 0.46, 267.594, 238.357, 0.44268),
    (61, 1, 251.81, 198.967, 59.84, 70.795, 0.54573), (61, 19, 230.159, 234.053, 133.828, 98.72, 0.39928),
    (61, 1, 376.311, 209.382, 44.25, 84.228, 0.31981), (61, 22, 233.512, 236.409, 133.02, 94.155, 0.31729),
    (49, 64, 200.626, 427.411, 71.003, 46.625, 0.75184), (49, 1, 119.575, 339.471, 11.663, 29.529, 0.6854),
    (49, 19, 166.765, 237.363, 122.341, 174.322, 0.64422), (49, 19, 79.529, 251.789, 107.964, 149.363, 0.55422),
    (49, 1, 281.54, 329.064, 13.753, 31.216, 0.44068), (49, 1, 188.847, 332.315, 10.917, 25.53, 0.43672),
    (49, 1, 78.208, 242.619, 92.639, 97.191, 0.42307), (49, 1, 145.876, 260.486, 27.779, 52.979, 0.41489),
    (49, 1, 359.434, 340.313, 15.704, 20.022, 0.30114), (36, 1, 175.064, 146.698, 266.963, 493.302, 0.66998),
    (36, 28, 14.068, 32.667, 435.729, 443.186, 0.35807)]


def test_val_only_save_json_equals_the_originals(tmp_path):
    import json
    import shutil
    coco = tmp_path / 'coco'
    for sub in ('images', 'labels'):
        (coco / sub / 'val2017').mkdir(parents=True)
    for i in COCO_JSON_COUNTS:
        stem = f'{i:012d}'
        shutil.copy(shared(COCO128 / f'images/train2017/{stem}.jpg'), coco / 'images/val2017')
        shutil.copy(COCO128 / f'labels/train2017/{stem}.txt', coco / 'labels/val2017')
    (coco / 'val2017.txt').write_text(''.join(f'./images/val2017/{i:012d}.jpg\n' for i in COCO_JSON_COUNTS))
    (tmp_path / 'coco.yaml').write_text(f'path: {coco}\ntrain: val2017.txt\nval: val2017.txt\n')
    r = run_train('--val-only', '--weights', WEIGHTS, '--data', tmp_path / 'coco.yaml', '--save-json', cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    ours = json.loads((tmp_path / 'runs/val/exp/yolov5n_predictions.json').read_text())
    assert {i: sum(r['image_id'] == i for r in ours) for i in COCO_JSON_COUNTS} == COCO_JSON_COUNTS
    top = np.array([[r['image_id'], r['category_id'], *r['bbox'], r['score']] for r in ours if r['score'] >= 0.3])
    assert len(top) == len(COCO_JSON_TOP) and match_rows(top, np.array(COCO_JSON_TOP), slice(1, None)) < 0.01
    assert set(ours[0]) == {'image_id', 'category_id', 'bbox', 'score'}


def test_coco_ids_only_on_coco_and_pycocotools_where_installed(tmp_path, monkeypatch, capsys):
    det = torch.tensor([[10.0, 20.0, 50.0, 80.0, 0.9, 0.0], [0.0, 0.0, 5.0, 5.0, 0.123456, 79.0]])
    assert support.results.coco_records(det, 'x/000000000042.jpg') == [
        dict(image_id=42, category_id=0, bbox=[10.0, 20.0, 40.0, 60.0], score=0.9),
        dict(image_id=42, category_id=79, bbox=[0.0, 0.0, 5.0, 5.0], score=0.12346)]
    assert support.results.coco_records(det, 'a/cat_1.png')[0]['image_id'] == 'cat_1'
    fake = tmp_path / 'site/pycocotools'  # a stand-in that records how it is called
    fake.mkdir(parents=True)
    (fake / '__init__.py').write_text('')
    (fake / 'coco.py').write_text('class COCO:\n    def __init__(self, path):\n        print("annotations", path)\n'
                                  '    def loadRes(self, path):\n        return path\n')
    (fake / 'cocoeval.py').write_text(
        'class COCOeval:\n    def __init__(self, truth, results, kind):\n        self.results, self.params = results, '
        'type("P", (), {})()\n    def evaluate(self):\n        print("images", self.params.imgIds)\n'
        '    def accumulate(self):\n        pass\n'
        '    def summarize(self):\n        print("summary of", self.results)\n')
    monkeypatch.syspath_prepend(str(tmp_path / 'site'))
    coco = {'val': [str(tmp_path / 'coco/val2017.txt')]}
    (tmp_path / 'coco/annotations').mkdir(parents=True)
    (tmp_path / 'coco/annotations/instances_val2017.json').write_text('{}')
    for spec, ids in [({'val': [str(tmp_path / 'other/val.txt')]}, [0, 79]), (coco, [1, 90])]:
        path = tmp_path / 'out.json'
        support.results.save_coco_json(support.results.coco_records(det, 'x/000000000042.jpg'), path, spec, ['x/000000000042.jpg'])
        assert [r['category_id'] for r in __import__('json').loads(path.read_text())] == ids
    out = capsys.readouterr().out  # pycocotools ran on COCO only, on its images
    assert out.count('summary of') == 1 and 'images [42]' in out and 'instances_val2017.json' in out


def test_task_test_validates_the_test_split(tmp_path, capsys):
    root = make_dataset(tmp_path / 'ds', [[(0, 20, 30, 90, 120)]] * 2)
    other = make_dataset(tmp_path / 'other', [[(0, 20, 30, 90, 120)]] * 3)
    (tmp_path / 'd.yaml').write_text(f'train: {root}\nval: {root}\ntest: {other}\n')
    args = ['--val-only', '--weights', str(WEIGHTS), '--data', str(tmp_path / 'd.yaml'), '--img', '160',
            '--project', str(tmp_path / 'runs')]
    T.run_val_only(T.parse_args(args + ['--task', 'test']))
    out = capsys.readouterr().out
    assert 'test: Scanned' in out and next(x for x in out.splitlines() if x.split()[:1] == ['all']).split()[1] == '3'
    (tmp_path / 'd.yaml').write_text(f'train: {root}\nval: {root}\n')
    with pytest.raises(SystemExit, match='no test: in the data YAML'):
        T.run_val_only(T.parse_args(args + ['--task', 'test']))


# The original's data/hyps/*.yaml (v7.0), key: value
ORIGINAL_HYPS = {
    'hyp.scratch-low.yaml': dict(lr0=0.01, lrf=0.01, momentum=0.937, weight_decay=0.0005, warmup_epochs=3.0,
        warmup_momentum=0.8, warmup_bias_lr=0.1, box=0.05, cls=0.5, cls_pw=1.0, obj=1.0, obj_pw=1.0, iou_t=0.2,
        anchor_t=4.0, fl_gamma=0.0, hsv_h=0.015, hsv_s=0.7, hsv_v=0.4, degrees=0.0, translate=0.1, scale=0.5,
        shear=0.0, perspective=0.0, flipud=0.0, fliplr=0.5, mosaic=1.0, mixup=0.0, copy_paste=0.0),
    'hyp.scratch-med.yaml': dict(lr0=0.01, lrf=0.1, momentum=0.937, weight_decay=0.0005, warmup_epochs=3.0,
        warmup_momentum=0.8, warmup_bias_lr=0.1, box=0.05, cls=0.3, cls_pw=1.0, obj=0.7, obj_pw=1.0, iou_t=0.2,
        anchor_t=4.0, fl_gamma=0.0, hsv_h=0.015, hsv_s=0.7, hsv_v=0.4, degrees=0.0, translate=0.1, scale=0.9,
        shear=0.0, perspective=0.0, flipud=0.0, fliplr=0.5, mosaic=1.0, mixup=0.1, copy_paste=0.0),
    'hyp.scratch-high.yaml': dict(lr0=0.01, lrf=0.1, momentum=0.937, weight_decay=0.0005, warmup_epochs=3.0,
        warmup_momentum=0.8, warmup_bias_lr=0.1, box=0.05, cls=0.3, cls_pw=1.0, obj=0.7, obj_pw=1.0, iou_t=0.2,
        anchor_t=4.0, fl_gamma=0.0, hsv_h=0.015, hsv_s=0.7, hsv_v=0.4, degrees=0.0, translate=0.1, scale=0.9,
        shear=0.0, perspective=0.0, flipud=0.0, fliplr=0.5, mosaic=1.0, mixup=0.1, copy_paste=0.1),
    'hyp.no-augmentation.yaml': dict(lr0=0.01, lrf=0.1, momentum=0.937, weight_decay=0.0005, warmup_epochs=3.0,
        warmup_momentum=0.8, warmup_bias_lr=0.1, box=0.05, cls=0.3, cls_pw=1.0, obj=0.7, obj_pw=1.0, iou_t=0.2,
        anchor_t=4.0, fl_gamma=0.0, hsv_h=0, hsv_s=0, hsv_v=0, degrees=0.0, translate=0, scale=0, shear=0,
        perspective=0.0, flipud=0.0, fliplr=0.0, mosaic=0.0, mixup=0.0, copy_paste=0.0),
    'hyp.VOC.yaml': dict(lr0=0.00334, lrf=0.15135, momentum=0.74832, weight_decay=0.00025, warmup_epochs=3.3835,
        warmup_momentum=0.59462, warmup_bias_lr=0.18657, box=0.02, cls=0.21638, cls_pw=0.5, obj=0.51728,
        obj_pw=0.67198, iou_t=0.2, anchor_t=3.3744, fl_gamma=0.0, hsv_h=0.01041, hsv_s=0.54703, hsv_v=0.27739,
        degrees=0.0, translate=0.04591, scale=0.75544, shear=0.0, perspective=0.0, flipud=0.0, fliplr=0.5,
        mosaic=0.85834, mixup=0.04266, copy_paste=0.0, anchors=3.412),
    'hyp.Objects365.yaml': dict(lr0=0.00258, lrf=0.17, momentum=0.779, weight_decay=0.00058, warmup_epochs=1.33,
        warmup_momentum=0.86, warmup_bias_lr=0.0711, box=0.0539, cls=0.299, cls_pw=0.825, obj=0.632, obj_pw=1.0,
        iou_t=0.2, anchor_t=3.44, anchors=3.2, fl_gamma=0.0, hsv_h=0.0188, hsv_s=0.704, hsv_v=0.36, degrees=0.0,
        translate=0.0902, scale=0.491, shear=0.0, perspective=0.0, flipud=0.0, fliplr=0.5, mosaic=1.0, mixup=0.0,
        copy_paste=0.0),
}


def test_every_original_hyp_file_is_read(tmp_path, capsys):
    for name, hyp in ORIGINAL_HYPS.items():  # as the original writes them: comments, `key: value  # what it is`
        text = '# YOLOv5 hyperparameters\n\n' + ''.join(f'{k}: {v}  # {k}\n' for k, v in hyp.items())
        (tmp_path / name).write_text(text)
        opt = T.parse_args(['--hyp', str(tmp_path / name)])
        used = {k: v for k, v in hyp.items() if k not in support.cli.NOT_USED}
        assert dict(opt.hyp) == used and set(used) <= set(T.HYP)
        err = capsys.readouterr().err  # the keys not used here are named, with why
        assert all(f'{name}: {k} is not used' in err for k in hyp if k in support.cli.NOT_USED) and 'iou_t' in err
    opt = T.parse_args(['--hyp', str(tmp_path / 'hyp.VOC.yaml'), 'lr0=0.5'])  # KEY=VALUE after a file overrides it
    assert dict(opt.hyp)['lr0'] == 0.5 and dict(opt.hyp)['mixup'] == 0.04266
    (tmp_path / 'bad.yaml').write_text('lr0: 0.01\nlr9: 2\n')
    for value, why in [('bad.yaml', "bad.yaml: unknown key 'lr9'"), ('nothere.yaml', 'No such file')]:
        with pytest.raises(SystemExit) as e:
            T.parse_args(['--hyp', str(tmp_path / value)])
        err = capsys.readouterr().err
        assert e.value.code == 2 and 'argument --hyp' in err and why in err and 'Traceback' not in err


# ---- P6 models. The original's yolov5n6 with every weight set by a formula (below), on a formula image (1, 3, 256,
# 320): its output (1, 5100, 85) -- sum, objectness sum, the sums of its 4 raw maps, rows 0, 2550 and 5099 (first six
# values) -- and with test-time augmentation (1, 10896, 85): sum, objectness sum, last row.
P6_SUM, P6_OBJ, P6_RAW = 2405964.4988, 2500.54616, [232.497745, 85.583087, 25.764537, 8.875086]
P6_ROWS = {0: [3.919014, 3.856691, 19.081982, 32.180714, 0.49109, 0.549363],
           2550: [243.810165, 251.679581, 40.821522, 46.200096, 0.48992, 0.561597],
           5099: [282.86908, 201.4776, 680.675903, 1249.728149, 0.627055, 0.444737]}
P6_TTA_SUM, P6_TTA_OBJ, P6_TTA_LAST = 5454016.978, 5341.61159, [326.67029, 205.19044, 1015.93414, 1865.26587, 0.62706]


def formula_weights(net):
    """Every float tensor of the state dict but the anchors from its key name and size, as the original's was set."""
    sd = {}
    for k, v in net.state_dict().items():
        if v.is_floating_point() and not k.endswith('anchors'):
            base = torch.sin(torch.arange(v.numel(), dtype=torch.float64) * 0.7311 + (sum(map(ord, k)) % 1000) * 0.0137)
            sd[k] = ((1 + 0.5 * base.abs()) if k.endswith('running_var') else base * 0.1).float().view(v.shape)
    net.load_state_dict(sd, strict=False)
    return net.eval()


@pytest.mark.parametrize('scale,params,fused', [('n6', 3246940, 3239884), ('s6', 12626620, 12612508),
                                                ('m6', 35731932, None), ('l6', 76770172, None),
                                                ('x6', 140794780, None)])  # the original's, as built by its code
def test_p6_scales_have_the_original_parameter_counts(scale, params, fused):
    net = M.YOLOv5(scale)
    assert net.arch == 'p6' and net.detect.stride.tolist() == [8, 16, 32, 64] and len(net.model) == 34
    assert sum(p.numel() for p in net.parameters()) == params
    if fused:
        assert sum(p.numel() for p in net.fuse().parameters()) == fused


def test_p6_outputs_equal_the_originals():
    net = formula_weights(M.YOLOv5('n6'))  # the key names enter the formula: the same names, or other outputs
    assert len(net.state_dict()) == 459 and list(net.state_dict())[-1] == 'model.33.m.3.bias'
    x = ((torch.sin(torch.arange(3 * 256 * 320, dtype=torch.float64) * 0.01) + 1) / 2).float().view(1, 3, 256, 320)
    for fused in (False, True):
        with torch.no_grad():
            y, raw = (net.fuse() if fused else net)(x)
        assert y.shape == (1, 5100, 85) and abs(y.double().sum().item() / P6_SUM - 1) < 1e-7
        assert abs(y[..., 4].double().sum().item() - P6_OBJ) < 1e-3
        np.testing.assert_allclose([r.double().sum().item() for r in raw], P6_RAW, rtol=1e-5)  # fusing: 3e-6
        for i, row in P6_ROWS.items():
            np.testing.assert_allclose(y[0, i, :6].tolist(), row, rtol=1e-5, atol=1e-5)
    y = next(M.predict(net, x, augment=True))[0]
    assert y.shape == (1, 10896, 85) and abs(y.double().sum().item() / P6_TTA_SUM - 1) < 1e-7
    assert abs(y[..., 4].double().sum().item() - P6_TTA_OBJ) < 1e-3
    np.testing.assert_allclose(y[0, -1, :5].tolist(), P6_TTA_LAST, rtol=1e-5)


def test_official_p6_checkpoint_downloads_by_name_and_loads(tmp_path, monkeypatch):
    """A P6 model pickled as the original's release files are (models.yolo.DetectionModel, 12 + 22 layers)."""
    import types
    net = formula_weights(M.YOLOv5('s6', nc=4, names=['a', 'b', 'c', 'd']))
    official = deepcopy(net)
    official.detect.__dict__['stride'] = official.detect._buffers.pop('stride')  # a plain attribute there
    official.__dict__.update(yaml={'nc': 4, 'depth_multiple': 0.33, 'width_multiple': 0.5, 'backbone': [[]] * 12,
                                   'head': [[]] * 22}, names={0: 'a', 1: 'b', 2: 'c', 3: 'd'})
    renames = [(M.YOLOv5, 'models.yolo', 'DetectionModel'), (M.Detect, 'models.yolo', 'Detect'),
               (M.Conv, 'models.common', 'Conv'), (M.C3, 'models.common', 'C3'),
               (M.Bottleneck, 'models.common', 'Bottleneck'), (M.SPPF, 'models.common', 'SPPF'),
               (M.Concat, 'models.common', 'Concat')]
    mirror = tmp_path / 'mirror'
    mirror.mkdir()
    originals = [(cls, cls.__module__, cls.__qualname__) for cls, _, _ in renames]
    with monkeypatch.context() as m:
        for module in ('models', 'models.yolo', 'models.common'):  # the original's module names, our classes inside
            m.setitem(sys.modules, module, types.ModuleType(module))
        try:
            for cls, module, name in renames:
                setattr(sys.modules[module], name, cls)
                cls.__module__, cls.__qualname__ = module, name
            ckpt = {'epoch': -1, 'model': official.half(), 'ema': None, 'date': '2022-11-22'}
            torch.save(ckpt, mirror / 'yolov5s6.pt')
        finally:
            for cls, module, name in originals:
                cls.__module__, cls.__qualname__ = module, name
    monkeypatch.setenv('YOLO_MIRROR', str(mirror))
    loaded = M.load_model(tmp_path / 'weights' / 'yolov5s6.pt')  # fetched by its name, as the P5 ones
    assert loaded.arch == 'p6' and loaded.names == ['a', 'b', 'c', 'd'] and loaded.scale == (0.33, 0.5)
    x = torch.rand(1, 3, 128, 192)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x)[0], net.half().float()(x)[0])


def test_p6_trains_validates_and_detects(tmp_path, capsys):
    root = make_shapes_dataset(tmp_path / 'shapes', n_train=4, n_val=2, size=128)
    args = ['--data', str(root), '--names', str(root / 'names.txt'), '--img', '100',
            '--project', str(tmp_path / 'runs')]
    run = T.Trainer(T.parse_args(['--weights', '', '--cfg', 'yolov5n6.yaml', '--batch', '4', '--epochs', '1',
                                  '--workers', '0', '--noautoanchor', *args])).fit()
    out = capsys.readouterr().out
    assert 'must be a multiple of 64 and >= 128, using 128' in out and 'Validating' in out
    ckpt = torch.load(run / 'weights/best.pt', weights_only=True)
    assert ckpt['config']['arch'] == 'p6' and ckpt['opt']['img'] == 128 and ckpt['model']['model.33.anchors'].shape == (4, 3, 2)
    opt = detect.parse_args([str(root / 'images/val/0000.jpg'), '--weights', str(run / 'weights/best.pt'),
                             '--img', '100', '--project', str(tmp_path / 'detect')])
    assert detect.run(opt) == 0 and ': 128x128 ' in capsys.readouterr().out


# ---------- the walk-through, the layers by number, one model description, numbers by name (issue 25)

# the walk-through's table: layer i, its module, its output's channels and size at 640 (yolov5n)
WALKTHROUGH = [('Conv', 16, 320), ('Conv', 32, 160), ('C3', 32, 160), ('Conv', 64, 80), ('C3', 64, 80),
               ('Conv', 128, 40), ('C3', 128, 40), ('Conv', 256, 20), ('C3', 256, 20), ('SPPF', 256, 20),
               ('Conv', 128, 20), ('Upsample', 128, 40), ('Concat', 256, 40), ('C3', 128, 40), ('Conv', 64, 40),
               ('Upsample', 64, 80), ('Concat', 128, 80), ('C3', 64, 80), ('Conv', 64, 40), ('Concat', 128, 40),
               ('C3', 128, 40), ('Conv', 128, 20), ('Concat', 256, 20), ('C3', 256, 20)]


def test_each_layer_by_its_number_gives_the_walk_throughs_module_and_shape_and_forward(yolov5n):
    net = deepcopy(yolov5n).train()
    X = torch.rand(2, 3, 640, 640)
    x = {1: net.model[0](X)}  # the walk-through's names: x(i + 1) = model.model[i](x(i)), the joins by hand
    joins = {12: [12, 7], 16: [16, 5], 19: [19, 15], 22: [22, 11]}
    with torch.no_grad():
        for i in range(1, 24):
            x[i + 1] = net.model[i]([x[k] for k in joins[i]] if i in joins else x[i])
        out = net.model[24]([x[18], x[21], x[24]])
        expected = net(X)
    for i, (name, channels, size) in enumerate(WALKTHROUGH):
        assert repr(net.model[i]).startswith(name) and tuple(x[i + 1].shape) == (2, channels, size, size), i
    assert repr(net.model[11]) == "Upsample(scale_factor=2.0, mode='nearest')" and repr(net.model[24]).startswith('Detect')
    assert [tuple(o.shape) for o in out] == [(2, 3, 80, 80, 85), (2, 3, 40, 40, 85), (2, 3, 20, 20, 85)]
    assert all(torch.equal(a, b) for a, b in zip(out, expected))
    assert net.sources[12] == [-1, 6] and net.sources[24] == [17, 20, 23] and net.sources[:12] == [-1] * 12


def test_the_p6_layers_by_number_equal_forward():
    net = formula_weights(M.YOLOv5('n6'))
    X = torch.rand(1, 3, 256, 320)
    outputs = []
    with torch.no_grad():
        x = X
        for i, layer in enumerate(net.model):  # each layer fed from the original's "from" column, by number
            source = net.sources[i]
            x = layer(x if source == -1 else [outputs[k] if k != -1 else x for k in source])
            outputs.append(x)
        expected = net(X)
    assert len(net.model) == 34 and [type(net.model[i]).__name__ for i in (13, 14, 17, 18, 21, 22, 25, 28, 31)] == \
        ['Upsample', 'Concat'] * 3 + ['Concat'] * 3
    assert net.sources[33] == [23, 26, 29, 32] and torch.equal(x[0], expected[0])
    assert [tuple(o.shape[2:]) for o in (outputs[23], outputs[26], outputs[29], outputs[32])] == \
        [(32, 40), (16, 20), (8, 10), (4, 5)]


def readme_block(heading):
    text = (ROOT / 'README.md').read_text()
    section = text[text.index(f'## {heading}'):]
    start = section.index('```python\n') + 10
    return section[start:section.index('\n```', start)]


def test_the_readmes_step_through_replays_the_walk_through(capsys):
    code = readme_block('Step through it').replace("'coco128.yaml'", repr(str(COCO128))).replace(
        "'yolov5n.pt'", repr(str(shared(WEIGHTS))))
    scope = {}
    exec(compile(code, 'README.md', 'exec'), scope)
    out = capsys.readouterr().out
    img, labels, X, y = scope['img'], scope['labels'], scope['X'], scope['y']
    assert img.shape == (3, 640, 640) and img.dtype == torch.uint8 and labels.shape[1] == 6 and (labels[:, 0] == 0).all()
    assert Path(scope['path']).parent == COCO128 / 'images/train2017' and len(scope['dataset']) == 128
    assert X.shape == (4, 3, 640, 640) and y.shape[1] == 6 and set(y[:, 0].tolist()) <= {0, 1, 2, 3}
    assert [tuple(p.shape) for p in scope['preds']] == [(4, 3, 80, 80, 85), (4, 3, 40, 40, 85), (4, 3, 20, 20, 85)]
    assert scope['x1'].shape == (4, 16, 320, 320) and scope['x2'].shape == (4, 32, 160, 160)
    assert "Upsample(scale_factor=2.0, mode='nearest') Concat()" in out
    assert set(scope['terms']) == {'box_loss', 'obj_loss', 'cls_loss'} and torch.isfinite(scope['loss']).all()
    tcls, tbox, indices, anchors = (scope[k] for k in ('tcls', 'tbox', 'indices', 'anchors'))
    assert len(tcls) == len(tbox) == len(indices) == len(anchors) == 3 and all(len(i) == 4 for i in indices)
    assert all(len(c) == len(b) == len(i[0]) == len(a) for c, b, i, a in zip(tcls, tbox, indices, anchors))
    # the training set as train.py makes it: the same hyperparameters, size and batch, the same first batch
    opt = T.parse_args(['--data', str(COCO128), '--weights', '', '--batch', '4', '--workers', '0'])
    ds = T.train_dataset(opt, support.data_yaml.data_spec(str(COCO128)), support.datasets.COCO_NAMES, T.HYP, 32)
    assert ds.hyp == T.HYP and ds.augment and ds.mosaic and ds.img_size == 640
    assert torch.equal(ds[0][0], img) and torch.equal(data.collate([ds[i] for i in range(2)])[0], data.collate(
        [scope['dataset'][i] for i in range(2)])[0])


def test_the_target_assignment_stops_under_pdb(tmp_path):
    root = make_shapes_dataset(tmp_path / 'shapes', n_train=4, n_val=1, size=64)
    script = tmp_path / 'step.py'
    script.write_text(f'import sys\nsys.path.insert(0, {str(ROOT)!r})\nfrom loss import YOLOLoss\nfrom model import YOLOv5\n'
                      f'from train import HYP, training_data\n'
                      f'dataset, loader = training_data({str(root)!r}, img=64, batch=2)\n'
                      f'X, y, paths, _ = next(iter(loader))\nmodel = YOLOv5("n", nc=3).train()\n'
                      f'loss, terms = YOLOLoss(model, HYP)(model(X.float() / 255), y)\n')
    line = next(i for i, text in enumerate((ROOT / 'loss.py').read_text().splitlines(), 1)
                if 'def build_targets' in text)
    r = subprocess.run([sys.executable, '-m', 'pdb', '-c', f'b {ROOT / "loss.py"}:{line + 3}', '-c', 'c',
                        '-c', 'where', '-c', 'p tuple(targets.shape)', '-c', 'q', str(script)], capture_output=True,
                       text=True, timeout=300, cwd=tmp_path)
    assert 'build_targets()' in r.stdout and ', 6)' in r.stdout, r.stdout[-2000:]  # stopped there: the batch's labels


P2_LAYERS = '''

def p2_layers(width, depth, nc, anchors):
    """yolov5-p2.yaml: P5's backbone, with a P2/4 output added to both paths."""
    return first_layers(width, depth) + [
        (-1, Conv(width(512), width(1024), 3, 2)),               # 7: P5/32
        (-1, C3(width(1024), width(1024), depth(3))),            # 8
        (-1, SPPF(width(1024), width(1024))),                    # 9
        (-1, Conv(width(1024), width(512), 1)),                  # 10
        (-1, nn.Upsample(None, 2, 'nearest')),                   # 11
        ([-1, 6], Concat()),                                     # 12
        (-1, C3(2 * width(512), width(512), depth(3), False)),   # 13
        (-1, Conv(width(512), width(256), 1)),                   # 14
        (-1, nn.Upsample(None, 2, 'nearest')),                   # 15
        ([-1, 4], Concat()),                                     # 16
        (-1, C3(2 * width(256), width(256), depth(3), False)),   # 17
        (-1, Conv(width(256), width(128), 1)),                   # 18
        (-1, nn.Upsample(None, 2, 'nearest')),                   # 19
        ([-1, 2], Concat()),                                     # 20: with the backbone's P2
        (-1, C3(2 * width(128), width(128), depth(3), False)),   # 21: P2 out
        (-1, Conv(width(128), width(128), 3, 2)),                # 22
        ([-1, 18], Concat()),                                    # 23
        (-1, C3(2 * width(128), width(256), depth(3), False)),   # 24: P3 out
        (-1, Conv(width(256), width(256), 3, 2)),                # 25
        ([-1, 14], Concat()),                                    # 26
        (-1, C3(2 * width(256), width(512), depth(3), False)),   # 27: P4 out
        (-1, Conv(width(512), width(512), 3, 2)),                # 28
        ([-1, 10], Concat()),                                    # 29
        (-1, C3(2 * width(512), width(1024), depth(3), False)),  # 30: P5 out
        ([21, 24, 27, 30], Detect(nc, anchors, [width(128), width(256), width(512), width(1024)],
                                  strides=[4, 8, 16, 32])),
    ]


ARCHITECTURES['p2'] = p2_layers
ANCHORS['p2'] = [[5, 6, 8, 14, 15, 11], *ANCHORS['p5']]
'''


def test_a_p2_level_added_in_model_py_alone_trains_saves_detects_and_validates(tmp_path):
    repo = tmp_path / 'repo'
    repo.mkdir()
    copy_project(repo)
    (repo / 'model.py').write_text((ROOT / 'model.py').read_text() + P2_LAYERS)  # the one edit
    root = make_shapes_dataset(tmp_path / 'shapes', n_train=8, n_val=4, size=128)
    train = [sys.executable, str(repo / 'train.py'), '--data', str(root), '--names', str(root / 'names.txt'),
             '--cfg', 'yolov5n-p2.yaml', '--weights', '', '--img', '128', '--batch', '4', '--epochs', '1',
             '--workers', '0', '--project', str(tmp_path / 'runs')]
    r = subprocess.run(train, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    best = tmp_path / 'runs/exp/weights/best.pt'
    config = torch.load(best, weights_only=True)['config']
    assert config['arch'] == 'p2' and len(config['anchors']) == 4 and 'Validating' in r.stdout
    r = subprocess.run([sys.executable, str(repo / 'detect.py'), str(root / 'images/val/0000.jpg'), '--weights',
                        str(best), '--img', '128', '--project', str(tmp_path / 'detect')], capture_output=True,
                       text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0 and ': 128x128 ' in r.stdout, r.stderr[-2000:]
    r = subprocess.run(train[:2] + ['--val-only', '--weights', str(best), '--data', str(root), '--names',
                                    str(root / 'names.txt'), '--img', '128', '--project', str(tmp_path / 'val')],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0 and 'mAP50-95' in r.stdout and 'Speed: ' in r.stdout, r.stderr[-2000:]
    r = subprocess.run([sys.executable, str(repo / 'train.py'), '--resume', str(tmp_path / 'runs/exp/weights/last.pt')],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert 'finished all 1 epochs' in r.stderr + r.stdout  # resume reads its config too: nothing left to do
    # this repository's model.py, without the edit, says what does not fit
    with pytest.raises(ValueError, match=r"best.pt: arch 'p2' is not an architecture of model.py"):
        M.load_model(best)


def test_a_checkpoint_of_an_edited_model_names_the_layer_that_differs(tmp_path):
    net = M.YOLOv5('n', nc=2, names=['a', 'b'])
    net.model[8].extra = M.Conv(64, 64, 3)  # a block someone changed, saved, then loaded with the plain model.py
    torch.save({'model': net.state_dict(), 'config': net.config()}, tmp_path / 'edited.pt')
    with pytest.raises(ValueError, match=r'edited.pt: weights do not fit the model they describe: layer 8 \(C3\) '
                                         r'differs: model.8.extra.bn.bias is \(64,\) there, missing in model.py'):
        M.load_model(tmp_path / 'edited.pt')
    plain = M.YOLOv5('n', nc=2, names=['a', 'b'])
    small = {k: v for k, v in plain.state_dict().items() if not k.startswith('model.24.')}  # a head too few
    torch.save({'model': small, 'config': plain.config()}, tmp_path / 'headless.pt')
    with pytest.raises(ValueError, match=r'layer 24 \(Detect\) differs: model.24.anchors is missing there'):
        M.load_model(tmp_path / 'headless.pt')
    torch.save({'model': plain.state_dict(), 'config': dict(plain.config(), depth=2)}, tmp_path / 'newer.pt')
    with pytest.raises(ValueError, match="newer.pt: model.py cannot build the model it describes .*'depth'"):
        M.load_model(tmp_path / 'newer.pt')


def test_every_reader_of_a_checkpoint_builds_from_its_config(tmp_path, monkeypatch):
    """Each reader (load_model for detect and --val-only, export, the hub, transfer) builds the architecture the
    checkpoint's config names (resume: the P2 test)."""
    calls = []
    real = M.YOLOv5.__init__

    def recording(self, *args, **kwargs):
        calls.append(kwargs.get('arch', 'p5'))
        real(self, *args, **kwargs)
    monkeypatch.setattr(M.YOLOv5, '__init__', recording)
    net = M.YOLOv5('n6', nc=2, names=['a', 'b'])
    path = tmp_path / 'p6.pt'
    torch.save({'model': net.state_dict(), 'config': net.config()}, path)
    calls.clear()
    assert M.load_model(path).arch == 'p6' and E.load_any(path).max_stride == 64
    hub = torch.hub.load(str(ROOT), 'custom', path=str(path), source='local')
    files = E.run(str(path), include=('torchscript',), imgsz=64)
    assert hub.model.arch == 'p6' and set(calls) == {'p6'} and E.load_any(files[0], trust=True).max_stride == 64
    model = T.build_model(T.parse_args(['--weights', str(path), '--data', str(COCO128)]), data_names=['x'])
    assert model.arch == 'p6' and model.nc == 1 and calls[-1] == 'p6'


def test_a_loss_term_added_in_loss_py_reaches_the_training_line_and_results_csv(tmp_path, monkeypatch, capsys):
    class WithCentreTerm(L.YOLOLoss):  # what one edit of YOLOLoss.__call__ makes: one more term, by name
        def __call__(self, preds, targets):
            loss, terms = super().__call__(preds, targets)
            return loss, dict(terms, centre_loss=terms['box_loss'] * 0 + 0.5)
    monkeypatch.setattr(T, 'YOLOLoss', WithCentreTerm)
    root = make_shapes_dataset(tmp_path / 'shapes', n_train=8, n_val=4, size=96)
    run = T.Trainer(tiny_args(root, tmp_path / 'runs', '--epochs', '1', '--img', '96')).fit()
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if 'Epoch' in line and 'GPU_mem' in line).split()
    assert header == ['Epoch', 'GPU_mem', 'box_loss', 'obj_loss', 'cls_loss', 'centre_loss', 'Instances', 'Size']
    values = next(line for line in out.splitlines() if line.split()[:1] == ['0/0']).split()
    assert values[5] == '0.5' and len(values) >= len(header)
    row = last_results(run)[0]
    assert row['train/centre_loss'] == 0.5 and row['val/centre_loss'] == 0.5


def test_the_training_line_prints_each_value_under_its_name(capsys, monkeypatch):
    monkeypatch.setattr(sys.stdout, 'isatty', lambda: False)
    row = {'Epoch': '3/9', 'GPU_mem': '0G', 'box_loss': torch.tensor(0.0523), 'lr': 0.01, 'Instances': 17, 'Size': 640}
    for i in range(3):
        support.console.print_progress(row, i, 3, time.time() - 1)
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split() == list(row) and lines[1].split()[:6] == ['3/9', '0G', '0.0523', '0.01', '17', '640']
    assert len(lines) == 2 and all(len(w) <= 11 for w in lines[0].split())


# ---------- correctness and hostile inputs, round three (issue 27)

def first_coco128_images(root, n):
    for kind, ext in (('images', '.jpg'), ('labels', '.txt')):
        (root / kind / 'train2017').mkdir(parents=True)
    for image in sorted((COCO128 / 'images/train2017').glob('*.jpg'))[:n]:
        shutil.copy(image, root / 'images/train2017')
        label = COCO128 / 'labels/train2017' / f'{image.stem}.txt'
        if label.exists():
            shutil.copy(label, root / 'labels/train2017')
    return root


def test_val_only_single_cls_gives_the_originals_metrics(tmp_path, capsys):
    """--single-cls validation of an 80-class model: every prediction becomes class 0 (its NMS class-agnostic), as the
    original's val.py does. The original's figures on the first 16 COCO128 images at 320, batch 8."""
    root = first_coco128_images(tmp_path / 'coco16', 16)
    T.run_val_only(T.parse_args(['--val-only', '--single-cls', '--weights', str(shared(WEIGHTS)), '--data', str(root),
                                 '--img', '320', '--batch', '8', '--project', str(tmp_path / 'val')]))
    row = next(line for line in capsys.readouterr().out.splitlines() if line.split()[:1] == ['all']).split()
    assert row == ['all', '16', '72', '0.786', '0.389', '0.469', '0.267']


@pytest.mark.parametrize('single_cls', [False, True])
def test_a_class_that_is_no_index_is_out_of_range_by_the_one_rule(tmp_path, single_cls):
    root = make_shapes_dataset(tmp_path / 'shapes', n_train=4, n_val=2, size=64)
    (root / 'labels/train/0002.txt').write_text('0 0.5 0.5 0.2 0.2\n1e40 0.5 0.5 0.2 0.2\n')
    args = tiny_args(root, tmp_path / 'runs', *(['--single-cls'] if single_cls else []))
    with pytest.raises(SystemExit, match=r'labels/train/0002.txt:2: class 1e\+40 is out of range: the dataset has '):
        T.Trainer(args)
    (root / 'labels/train/0002.txt').write_text('7 0.5 0.5 0.2 0.2\n')  # an index the dataset does not have
    if single_cls:  # every class trains as one, as the original's: accepted
        T.Trainer(tiny_args(root, tmp_path / 'runs', '--single-cls'))
    else:
        with pytest.raises(SystemExit, match=r'0002.txt: class 7 is out of range: the dataset has 3 classes'):
            T.Trainer(args)


def export_service_zip(root, names):
    """A zip as export services make them: train/ and valid/ at its top, with images/ and labels/ inside."""
    entries = {}
    for split, folder in (('train', 'train'), ('val', 'valid')):
        for image in sorted((root / 'images' / split).glob('*.jpg'))[:names]:
            entries[f'{folder}/images/{image.name}'] = image
            entries[f'{folder}/labels/{image.stem}.txt'] = root / 'labels' / split / f'{image.stem}.txt'
    return zip_bytes(entries)


def test_two_datasets_whose_zips_share_a_name_both_unpack(tmp_path, monkeypatch):
    monkeypatch.setattr(support.downloads, 'DATASETS_DIR', tmp_path / 'datasets')
    monkeypatch.delenv('YOLO_MIRROR', raising=False)
    root = make_shapes_dataset(tmp_path / 'shapes', n_train=3, n_val=2, size=64)
    srv = serve({'a/data.zip': export_service_zip(root, 1), 'b/data.zip': export_service_zip(root, 2)})
    for name in ('a', 'b'):
        (tmp_path / f'{name}.yaml').write_text(f'path: {tmp_path}/datasets/{name}\ntrain: train/images\n'
                                               f'val: valid/images\nnames: [r, d, t]\ndownload: {srv.url}{name}/data.zip\n')
    for name, count in (('a', 1), ('b', 2)):  # each in its own folder, not mixed in the datasets folder's root
        spec = support.data_yaml.data_spec(tmp_path / f'{name}.yaml')
        assert spec['train'] == [str(tmp_path / 'datasets' / name / 'train/images')]
        assert len(support.datasets.find_images(spec['train'])) == count
    assert not (tmp_path / 'datasets/train').exists()


def test_a_wrong_zip_then_the_right_one_at_the_same_url(tmp_path, monkeypatch):
    monkeypatch.setattr(support.downloads, 'DATASETS_DIR', tmp_path / 'datasets')
    monkeypatch.delenv('YOLO_MIRROR', raising=False)
    root = make_shapes_dataset(tmp_path / 'shapes', n_train=2, n_val=1, size=64)
    srv = serve({'ds.zip': zip_bytes({'ds/readme.txt': b'not the dataset'})})
    yaml = tmp_path / 'ds.yaml'
    yaml.write_text(f'path: {tmp_path}/datasets/ds\ntrain: train/images\nval: valid/images\nnames: [r, d, t]\n'
                    f'download: {srv.url}ds.zip\n')
    with pytest.raises(FileNotFoundError, match='train/images not found'):
        support.data_yaml.data_spec(yaml)
    srv.files['ds.zip'] = export_service_zip(root, 2)  # the mirror fixed
    spec = support.data_yaml.data_spec(yaml)  # fetched again: the dataset was still missing
    assert len(support.datasets.find_images(spec['train'])) == 2 and len(srv.requests) == 2
    marker = json.loads(support.downloads.done_marker(f'{srv.url}ds.zip', tmp_path / 'datasets').read_text())
    assert marker['files']['ds/train/images/0000.jpg'] > 0  # what it unpacked, file by file, with sizes
    (tmp_path / 'datasets/ds/train/images/0000.jpg').write_bytes(b'cut')  # a file cut short: fetched again
    assert not support.downloads.is_downloaded(f'{srv.url}ds.zip', tmp_path / 'datasets')


def test_a_numeric_split_names_its_folder(tmp_path):
    root = make_shapes_dataset(tmp_path / 'shapes', n_train=2, n_val=1, size=64)
    (root / 'images/train').rename(root / 'images/2017')
    (root / 'labels/train').rename(root / 'labels/2017')
    (root / 'data.yaml').write_text('path: images\ntrain: 2017\nval: 2017\nnames: [r, d, t]\n')
    assert support.data_yaml.data_spec(root / 'data.yaml')['train'] == [str(root / 'images/2017')]


def claim_in_processes(project, count):
    with __import__('multiprocessing').get_context('fork').Pool(16) as pool:
        return pool.starmap(support.runs.run_dir, [(project, 'exp')] * count, chunksize=1)


def test_concurrent_runs_never_share_a_run_folder(tmp_path):
    claimed = claim_in_processes(tmp_path / 'runs', 400)
    assert len(set(claimed)) == 400 and all(p.is_dir() for p in claimed)
    # a run whose start fails removes only the folder it claimed itself, never another's
    other = claimed[0]
    with pytest.raises(ValueError), support.runs.removed_if_unstarted(other, fresh=True):
        raise ValueError('a start that failed')
    assert other.is_dir()
    mine = support.runs.run_dir(tmp_path / 'runs', 'exp')
    with pytest.raises(ValueError), support.runs.removed_if_unstarted(mine, fresh=True):
        raise ValueError('a start that failed')
    assert not mine.exists()


def test_export_writes_atomically_and_says_why_it_cannot(exported, tmp_path, monkeypatch, capsys):
    pt = tmp_path / 'yolov5n.pt'
    shutil.copy(exported['pt'], pt)
    good = tmp_path / 'yolov5n.torchscript'
    good.write_bytes(b'the good export of yesterday')
    real = E.export_torchscript

    def killed(net, im, file, meta):  # the process dies halfway through writing
        Path(file).write_bytes(b'half')
        raise KeyboardInterrupt
    monkeypatch.setattr(E, 'export_torchscript', killed)
    with pytest.raises(KeyboardInterrupt):
        E.run(str(pt), include=('torchscript',), imgsz=64)
    assert good.read_bytes() == b'the good export of yesterday' and sorted(p.name for p in tmp_path.iterdir()) == [
        'yolov5n.pt', 'yolov5n.torchscript']
    monkeypatch.setattr(E, 'export_torchscript', real)

    def read_only(*args):
        raise PermissionError(13, 'Permission denied')
    monkeypatch.setattr(E.os, 'replace', read_only)
    with pytest.raises(SystemExit, match=r'yolov5n.torchscript: cannot save \(Permission denied\); nothing written'):
        E.main(E.parse_args(['--weights', str(pt), '--img', '64']))
    monkeypatch.undo()
    assert good.read_bytes() == b'the good export of yesterday' and len(list(tmp_path.iterdir())) == 2
    with pytest.raises(SystemExit) as e:
        E.parse_args(['--opset', '99'])
    assert e.value.code == 2 and 'argument --opset' in capsys.readouterr().err
    if importlib.util.find_spec('onnx'):
        with pytest.raises(SystemExit, match='ONNX opset 7: torch cannot export this model at it'):
            E.main(E.parse_args(['--weights', str(pt), '--include', 'onnx', '--opset', '7', '--img', '64']))
        assert sorted(p.name for p in tmp_path.iterdir()) == ['yolov5n.pt', 'yolov5n.torchscript']


def test_ctrl_c_right_after_the_final_checkpoint_is_finished_by_resume(tmp_path, monkeypatch, capsys):
    root = make_shapes_dataset(tmp_path / 'shapes', n_train=8, n_val=4, size=64)
    real = T.save_checkpoint

    def interrupted(state, path):  # Ctrl-C as best.pt of the final epoch is written, last.pt already was
        real(state, path)
        if state['epoch'] == 1 and Path(path).name == 'last.pt':
            raise KeyboardInterrupt
    monkeypatch.setattr(T, 'save_checkpoint', interrupted)
    with pytest.raises(SystemExit) as e:
        T.Trainer(tiny_args(root, tmp_path / 'runs', '--epochs', '2', '--img', '64')).fit()
    out = capsys.readouterr().out
    last = tmp_path / 'runs/exp/weights/last.pt'
    assert e.value.code == 130 and f'{last} holds epoch 1, the final one; --resume finishes the run' in out
    monkeypatch.setattr(T, 'save_checkpoint', real)
    T.Trainer(T.parse_args(['--resume', str(last), '--workers', '0'])).fit()
    out = capsys.readouterr().out
    assert 'Finishing' in out and 'Validating' in out and 'all ' in out
    ckpt = torch.load(last, weights_only=True)
    assert 'optimizer' not in ckpt and ckpt['epoch'] == 1  # stripped: the run is complete
    with pytest.raises(SystemExit, match='finished all 2 epochs: nothing to resume'):
        T.Trainer(T.parse_args(['--resume', str(last), '--workers', '0']))


# ---------- exported models, the Python API and odd values (issue 28), the original's ONNX files (issue 26)

def onnx_like_the_originals(pt, path, dynamic=True, names=None, stride='32', opset=17, outputs=1):
    """An ONNX file in the original's layout (torch's TorchScript-based exporter, output0 first, its metadata as
    strings, the names as a dict), written by this project's exporter: the original is not at hand here."""
    onnx = pytest.importorskip('onnx')
    net = E.Traceable(M.load_model(pt, fuse=True))
    if outputs > 1:  # as the original's from today's torch: the raw maps after output0
        net.forward = lambda x: (net.model(x)[0], *net.model(x)[1])
    axes = {'images': {0: 'batch', 2: 'height', 3: 'width'}, 'output0': {0: 'batch', 1: 'anchors'}} if dynamic else None
    torch.onnx.export(net, torch.zeros(1, 3, 640, 640), str(path), opset_version=opset, input_names=['images'],
                      output_names=['output0'] + [f'clone_{i}' for i in range(outputs - 1)], dynamic_axes=axes,
                      dynamo=False)
    proto = onnx.load(str(path))
    meta = dict(stride=stride, names=str(dict(enumerate(support.datasets.COCO_NAMES))) if names is None else names)
    for key, value in meta.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(path))
    return path


@needs_onnx
def test_the_originals_onnx_files_give_the_pt_detections_through_opencv_or_onnxruntime(exported, tmp_path, monkeypatch,
                                                                                       capsys):
    want = detect_labels(exported['pt'], tmp_path / 'pt', shared(BUS))['bus']
    for outputs in (1, 4):
        path = onnx_like_the_originals(exported['pt'], tmp_path / f'original{outputs}.onnx', outputs=outputs)
        assert match_rows(detect_labels(path, tmp_path / f'cv{outputs}', BUS)['bus'], want) < 1e-3  # OpenCV reads it
    real = cv2.dnn.readNetFromONNX

    def unreadable(*args):  # as OpenCV 4.x on the original's files: "Node [Floor] (model.11) parse error"
        raise cv2.error('Node [Floor]@ai.onnx (model.11) parse error')
    monkeypatch.setattr(cv2.dnn, 'readNetFromONNX', unreadable)
    if importlib.util.find_spec('onnxruntime'):
        got = detect_labels(tmp_path / 'original4.onnx', tmp_path / 'ort', BUS)['bus']
        assert np.abs(got[:, 1:5] - want[:, 1:5]).max() * 1080 < 1e-3 * 10 and match_rows(got, want) < 1e-3
    monkeypatch.setattr(importlib.util, 'find_spec', lambda name, *a: None if name == 'onnxruntime' else real)
    with pytest.raises(SystemExit, match=r'original4.onnx: it does not run: .*parse error.*pip install onnxruntime'):
        detect_labels(tmp_path / 'original4.onnx', tmp_path / 'none', BUS)


@needs_onnx
@pytest.mark.parametrize('change,error', [
    (dict(names='5'), r"class names '5' are not a list"),
    (dict(names='[]'), r"class names '\[\]' are not a list"),
    (dict(names="{0: 'a', 5: 'b'}"), 'are not a list or'),
    (dict(stride='0'), r"stride '0' is not a model's"),
    (dict(stride='1e9'), r"stride '1e9' is not a model's"),
    (dict(names=str(dict(enumerate(['a', 'b', 'c'])))), 'its metadata names 3 classes, its output scores 80'),
    (dict(names=str(dict(enumerate(['x'] * 81)))), 'its metadata names 81 classes, its output scores 80')])
def test_an_exported_files_metadata_is_checked_where_it_is_read(exported, tmp_path, change, error):
    path = onnx_like_the_originals(exported['pt'], tmp_path / 'odd.onnx', **change)
    with pytest.raises(ValueError, match=f'odd.onnx: (.*){error}'):
        E.load_any(path)
    r = run_detect(shared(BUS), '--weights', path, cwd=tmp_path)
    assert r.returncode == 1 and 'odd.onnx' in r.stderr and 'Traceback' not in r.stderr


@needs_onnx
def test_a_classifier_or_a_damaged_export_is_refused_clearly(exported, tmp_path):
    onnx = pytest.importorskip('onnx')
    classifier = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    torch.onnx.export(classifier, torch.zeros(1, 3, 64, 64), str(tmp_path / 'cls.onnx'), input_names=['images'],
                      output_names=['output0'], dynamo=False)
    proto = onnx.load(str(tmp_path / 'cls.onnx'))
    proto.metadata_props.add(key='names', value="{0: 'a', 1: 'b', 2: 'c', 3: 'd'}")
    onnx.save(proto, str(tmp_path / 'cls.onnx'))
    with pytest.raises(ValueError, match=r'cls.onnx: not a detection model: its output is \(1, 4\)'):
        E.load_any(tmp_path / 'cls.onnx')
    whole = exported['torchscript'].read_bytes()
    (tmp_path / 'cut.torchscript').write_bytes(whole[:len(whole) // 2])
    (tmp_path / 'text.torchscript').write_text('not a model')
    for name in ('cut', 'text'):
        with pytest.raises(ValueError, match=f'{name}.torchscript: not a TorchScript'):
            E.load_any(tmp_path / f'{name}.torchscript', trust=True)
    with pytest.raises(ValueError, match=r'--augment \(test-time augmentation\) needs the model as a .pt'):
        E.load_any(exported['torchscript'], trust=True, augment=True)
    fixed = onnx_like_the_originals(exported['pt'], tmp_path / 'fixed.onnx', dynamic=False)
    r = run_detect(shared(BUS), '--weights', fixed, '--img', '800', cwd=tmp_path)
    assert r.returncode == 1 and 'takes images up to 640x640: use --img 640' in r.stderr and 'Traceback' not in r.stderr


def test_a_torchscript_file_runs_only_when_trusted(exported, tmp_path, monkeypatch, capsys):
    with pytest.raises(ValueError, match='holds code, which loading it runs; give --trust-code'):
        E.load_any(exported['torchscript'])
    r = run_detect(shared(BUS), '--weights', exported['torchscript'], cwd=tmp_path)
    assert r.returncode == 1 and '--trust-code' in r.stderr and 'Traceback' not in r.stderr
    r = run_detect(shared(BUS), '--weights', exported['torchscript'], '--trust-code', cwd=tmp_path)
    assert r.returncode == 0 and '4 persons, 1 bus' in r.stdout
    monkeypatch.setattr(sys.stdin, 'isatty', lambda: True)  # on a terminal it asks
    answers = iter(['n', 'y'])
    monkeypatch.setattr('builtins.input', lambda question: next(answers))
    with pytest.raises(ValueError, match='holds code'):
        E.load_any(exported['torchscript'])
    assert E.load_any(exported['torchscript']).nc == 80


def test_the_hub_takes_every_image_kind_and_refuses_the_rest_clearly(exported, tmp_path, capsys):
    hub = torch.hub.load(str(ROOT), 'custom', path=str(exported['pt']), source='local', device='cpu')
    rgb = cv2.imread(str(shared(BUS)))[..., ::-1]
    want = hub(rgb).xyxy[0]
    for kind, im in [('16 bits', rgb.astype(np.uint16) * 257), ('floats 0-1', rgb / 255.0),
                     ('RGBA', np.dstack((rgb, np.full(rgb.shape[:2], 255, np.uint8)))),
                     ('PIL 16-bit grey', Image.fromarray(rgb.mean(2).astype(np.uint16) * 257)),
                     ('(3, h, w)', rgb.transpose(2, 0, 1))]:
        got = hub(im).xyxy[0]
        if 'grey' not in kind:
            assert torch.equal(got, want), kind
    grey = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)
    assert torch.equal(hub(grey[..., None]).xyxy[0], hub(grey).xyxy[0])  # (h, w, 1) as (h, w)
    assert len(hub(np.full((10, 10000, 3), 114, np.uint8)).xyxy[0]) == 0  # a sliver of an image runs
    for ims, size, error in [(None, 640, 'image0: None is not an image'), ([], 640, 'no images given'),
                             (np.zeros((0, 5, 3), np.uint8), 640, r'not an image: an array of shape \(0, 5, 3\)'),
                             (rgb, 0, 'size=0: an image size'), (np.full((4, 4), np.nan), 640, 'not all finite'),
                             (rgb.astype(np.int32) * 300, 640, 'not 8 or 16 bits')]:
        with pytest.raises(ValueError, match=error):
            hub(ims, size=size)
    results = hub(rgb)
    (tmp_path / 'file').write_text('a file, not a folder')
    with pytest.raises(OSError, match='cannot write the run folder'):
        results.save(save_dir=tmp_path / 'file' / 'exp')
    assert 'Saved' not in capsys.readouterr().out


def test_the_hubs_urls_are_bounded_in_time_and_size(exported, monkeypatch):
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == '/missing.jpg':
                return self.send_error(404)
            self.send_response(200)
            self.end_headers()
            for _ in range(10 ** 6):  # an endless body, slowly for /slow.jpg
                self.wfile.write(b'x' * 65536)
                if self.path == '/slow.jpg':
                    __import__('time').sleep(0.2)

        def log_message(self, *args):
            pass
    srv = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    url = f'http://127.0.0.1:{srv.server_address[1]}'
    hubconf = __import__('hubconf')
    monkeypatch.setattr(hubconf, 'MAX_DOWNLOAD', 2 ** 20)
    monkeypatch.setattr(hubconf, 'DOWNLOAD_SECONDS', 1)
    for name, error in (('missing', 'the server answered 404'), ('endless', 'more than 1 MB'), ('slow', 'slower than 1 s')):
        with pytest.raises(ValueError, match=f'{url}/{name}.jpg: .*{error}'):
            hubconf.read_image(f'{url}/{name}.jpg', 0)
    with pytest.raises(ValueError, match='127.0.0.1:9/x.jpg: cannot fetch it'):
        hubconf.read_image('http://127.0.0.1:9/x.jpg', 0)  # nothing listens there
    srv.shutdown()


def test_detect_sources_read_as_written(tmp_path, capsys):
    image = tmp_path / 'a photo.jpg'  # a space in its name
    cv2.imwrite(str(image), scene(64, 96, [(10, 10, 40, 40)]))
    (tmp_path / 'list.streams').write_text(f'{image}\n\n')
    (tmp_path / 'latin1.streams').write_bytes('caf\xe9.jpg\n'.encode('latin-1'))
    cv2.imwrite(str(tmp_path / 'sliver.png'), np.full((10, 10000, 3), 90, np.uint8))
    opt = detect.parse_args([str(tmp_path / 'list.streams'), str(tmp_path / 'latin1.streams'), str(tmp_path / 'sliver.png'),
                             '--weights', str(shared(WEIGHTS)), '--img', '320', '--project', str(tmp_path / 'runs')])
    assert detect.run(opt) == 0
    out, err = capsys.readouterr()
    assert f'{image}: ' in out and 'sliver.png: 32x320 ' in out
    assert 'latin1.streams: not UTF-8 text' in err and 'Traceback' not in err


@pytest.mark.parametrize('value,error', [('momentum=0', r'momentum: 0 is not in \(0, 0.999\]'),
                                         ('lr0=-0.01', r'lr0: -0.01 is not in \(0, 1\]'),
                                         ('nbs=0', r'nbs: 0 is not in \[1, 8192\]'),
                                         ('warmup_epochs=inf', 'warmup_epochs: inf is not in'),
                                         ('fliplr=nan', 'fliplr: nan is not in')])
def test_impossible_hyperparameters_are_refused_before_the_run(tmp_path, capsys, value, error):
    with pytest.raises(SystemExit) as e:
        T.parse_args(['--hyp', value])
    err = capsys.readouterr().err
    assert e.value.code == 2 and re.search(error, err) and 'argument --hyp' in err, err


def test_impossible_starts_and_small_lies(tmp_path, monkeypatch, capsys):
    root = make_shapes_dataset(tmp_path / 'shapes', n_train=8, n_val=2, size=64)
    with pytest.raises(SystemExit, match=r'--freeze \[25\]: no layer is left to train'):
        T.Trainer(tiny_args(root, tmp_path / 'runs', '--freeze', '25'))
    assert not (tmp_path / 'runs').exists() or list((tmp_path / 'runs').iterdir()) == []  # labels.jpg went too
    r = subprocess.run([sys.executable, str(ROOT / 'data.py'), str(root), '--img', '64', '--batch', '2', '--out',
                        str(tmp_path / 'nodir' / 'x.jpg')], capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and 'x.jpg: cannot save' in r.stderr and 'written' not in r.stdout
    (root / 'd.yaml').write_text('path: .\ntrain: images/train\nval: images/val\nnames: [r, d, t]\n')
    with pytest.raises(SystemExit, match='d.yaml: no test: in the data YAML'):
        T.run_val_only(T.parse_args(['--val-only', '--weights', str(shared(WEIGHTS)), '--data', str(root / 'd.yaml'),
                                     '--task', 'test', '--single-cls', '--project', str(tmp_path / 'v')]))
    assert support.results.coco_records(torch.tensor([[1.0, 2, 3, 4, 0.5, 0]]), 'x/\u00b2.jpg')[0]['image_id'] == '\u00b2'


def test_resume_takes_a_moved_dataset(tmp_path, monkeypatch):
    root = make_shapes_dataset(tmp_path / 'shapes', n_train=16, n_val=8, size=128)
    interrupted_at_epoch_1(monkeypatch, tiny_args(root, tmp_path / 'runs', '--epochs', '2'))
    moved = root.rename(tmp_path / 'moved')
    last = tmp_path / 'runs/exp/weights/last.pt'
    with pytest.raises(SystemExit, match='shapes'):  # where it was: gone
        T.Trainer(T.parse_args(['--resume', str(last), '--workers', '0']))
    T.Trainer(T.parse_args(['--resume', str(last), '--workers', '0', '--data', str(moved),
                            '--names', str(moved / 'names.txt')])).fit()
    assert [r['epoch'] for r in last_results(tmp_path / 'runs/exp')] == [0, 1]


# ------------------------------------------------------------------------------------ issue 26: the original's flags
# that were missing

def test_image_weights_are_the_originals_and_drive_the_draws():
    labels = [np.array([[0, .5, .5, .1, .1], [0, .2, .2, .1, .1]]), np.array([[1, .5, .5, .1, .1]]),
              np.array([[2, .5, .5, .1, .1], [0, .3, .3, .1, .1]]), np.zeros((0, 5))]
    weights = support.datasets.image_weights(labels, 4, [0.5, 0.1, 0.9, 0.0])
    # the original's labels_to_image_weights(labels, 4, labels_to_class_weights(labels, 4) * (1 - maps) ** 2 / 4)
    np.testing.assert_allclose(weights, [0.15576, 0.75701, 0.087227, 0], atol=2e-5)
    assert np.allclose(support.datasets.image_weights(labels, 4, [1, 1, 1, 1]), 0.25)  # all found: as without
    sampler = data.EpochSampler(list(range(4)), 1, 0, shuffle=True, seed=3)
    sampler.weights = weights
    first = [i for _, i in sampler]
    assert len(first) == 4 and first == [i for _, i in sampler]  # repeatable: seeded by (seed, epoch)
    draws = []
    for epoch in range(300):
        sampler.set_epoch(epoch)
        draws += [i for _, i in sampler]
    share = np.bincount(draws, minlength=4) / len(draws)
    assert np.abs(share - weights).max() < 0.03 and share[3] == 0, share


def test_quads_are_the_originals_grid_or_first_image_enlarged():
    imgs = torch.stack([torch.full((3, 8, 8), 10 * (k + 1), dtype=torch.uint8) for k in range(8)])
    labels = torch.tensor([[k, k % 3, 0.5, 0.25, 0.5, 0.5] for k in range(8)])
    kinds = set()
    for seed in range(12):  # the draw follows the files: some batches grid, some enlarged
        paths = [f'{seed}/{k}.jpg' for k in range(8)]
        out, out_labels, out_paths, _ = support.datasets.quads((imgs, labels, paths, [None] * 8))
        assert out.shape == (2, 3, 16, 16) and out_paths == paths[:2]
        for sample in range(2):
            own = out_labels[out_labels[:, 0] == sample]
            first = imgs[4 * sample]
            if len(own) == 1:  # the first image, 2x, its labels as they were (normalized)
                kinds.add('enlarged')
                assert (out[sample] == first[0, 0, 0]).all() and own[0, 1:].tolist() == labels[4 * sample, 1:].tolist()
            else:  # 2x2: the second below the first, the third right of it; coordinates halved, shifted
                kinds.add('grid')
                assert (out[sample, :, :8, :8] == first).all()
                assert (out[sample, :, 8:, :8] == imgs[4 * sample + 1]).all()
                assert (out[sample, :, :8, 8:] == imgs[4 * sample + 2]).all()
                np.testing.assert_allclose(own[:, 2:].tolist(), [[0.25, 0.125, 0.25, 0.25], [0.25, 0.625, 0.25, 0.25],
                                                                 [0.75, 0.125, 0.25, 0.25], [0.75, 0.625, 0.25, 0.25]])
        again = support.datasets.quads((imgs, labels, paths, [None] * 8))
        assert torch.equal(again[0], out) and torch.equal(again[1], out_labels)
    assert kinds == {'grid', 'enlarged'}
    out, out_labels, _, _ = support.datasets.quads((imgs[:3], labels[:3], paths[:3], [None] * 3))  # a last batch
    assert out.shape == (3, 3, 16, 16) and torch.equal(out_labels, labels[:3])  # of 3: each image enlarged


def test_disk_cache_writes_an_npy_per_image_and_reads_it(tmp_path, capsys):
    root = make_dataset(tmp_path, [[(0, 10, 10, 50, 50)], [(1, 20, 20, 80, 90)]], size=(96, 128))
    ds = data.YOLODataset(root / 'images/train', img_size=128, cache='disk', nc=2)
    npys = sorted((root / 'images/train').glob('*.npy'))
    assert [p.stem for p in npys] == ['im0', 'im1'] and 'Cached 2 images on disk' in capsys.readouterr().out
    assert np.array_equal(np.load(npys[0]), cv2.imread(str(root / 'images/train/im0.jpg')))
    np.save(npys[0], np.zeros((96, 128, 3), np.uint8))  # what is read is the .npy
    assert ds.load_image(0)[0].max() == 0
    npys[0].write_bytes(b'damaged')  # a damaged one: the image is decoded instead
    assert ds.load_image(0)[0].max() > 0
    capsys.readouterr()
    data.YOLODataset(root / 'images/train', img_size=128, cache='disk', nc=2)  # again: the ones newer than their image
    assert 'Cached 0 images on disk (0.0 GB), 2 were there' in capsys.readouterr().out  # are kept
    os.utime(root / 'images/train/im0.jpg', (npys[0].stat().st_mtime + 10,) * 2)  # an image changed: decoded again
    data.YOLODataset(root / 'images/train', img_size=128, cache='disk', nc=2)
    assert 'Cached 1 images on disk' in capsys.readouterr().out and np.load(npys[0]).max() > 0


def test_one_run_with_quad_image_weights_disk_cache_save_period_and_tensorboard(tmp_path, capsys):
    pytest.importorskip('tensorboard')
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    root = make_shapes_dataset(tmp_path / 'shapes', n_train=16, n_val=4, size=64)
    trainer = T.Trainer(tiny_args(root, tmp_path / 'runs', '--quad', '--image-weights', '--cache', 'disk',
                                  '--save-period', '1', '--epochs', '2'))
    imgs, targets, _, _ = next(iter(trainer.train_loader))
    assert imgs.shape == (2, 3, 256, 256) and set(targets[:, 0].tolist()) <= {0, 1}  # 8 images as 2 quads
    run = trainer.fit()
    out = capsys.readouterr().out
    assert 'Cached 16 images on disk' in out and len(list((root / 'images/train').glob('*.npy'))) == 16
    weights = trainer.train_loader.sampler.weights
    assert weights is not None and abs(weights.sum() - 1) < 1e-9 and len(weights) == 16
    assert sorted(p.name for p in (run / 'weights').glob('*.pt')) == ['best.pt', 'epoch0.pt', 'epoch1.pt', 'last.pt']
    assert "TensorBoard: Start with 'tensorboard --logdir" in out
    events = EventAccumulator(str(run)).Reload()
    for tag in ('train/box_loss', 'metrics/mAP_0.5', 'val/obj_loss', 'x/lr0'):
        assert [e.step for e in events.Scalars(tag)] == [0, 1], tag
    rows = last_results(run)
    logged = [e.value for e in events.Scalars('train/box_loss')]
    assert logged == pytest.approx([r['train/box_loss'] for r in rows], 1e-4)
    assert {'results', 'labels', 'confusion_matrix', 'train_batch0'} <= set(events.Tags()['images'])


def test_evolve_mutates_the_originals_hyperparameters_and_resumes(tmp_path, capsys):
    from support.evolve import META, METRICS
    root = make_shapes_dataset(tmp_path / 'shapes', n_train=8, n_val=4, size=64)
    population = tmp_path / 'population'
    population.mkdir()
    (population / 'a.yaml').write_text('lr0: 0.02\nnot_a_key: 1\n')
    argv = ['--weights', '', '--cfg', 'n', '--data', str(root), '--names', str(root / 'names.txt'), '--img', '64',
            '--batch', '4', '--epochs', '1', '--workers', '0', '--project', str(tmp_path / 'evolve'), '--hyp', 'nbs=4',
            '--evolve_population', str(population), '--evolve', '2']
    folder = T.main(argv)
    csv = folder / 'evolve.csv'
    lines = csv.read_text().splitlines()
    assert [h.strip() for h in lines[0].split(',')] == METRICS + list(T.HYP) and len(lines) == 3
    rows = np.array([[float(v) for v in line.split(',')] for line in lines[1:]])
    hyp = [dict(zip(T.HYP, row[len(METRICS):])) for row in rows]
    assert hyp[0]['lr0'] == 0.02 and hyp[0]['momentum'] == T.HYP['momentum']  # the population's file, as it is
    assert all(h['nbs'] == 4 for h in hyp)  # --hyp's values are the start; what META lacks never changes
    changed = [k for k in META if hyp[1][k] != hyp[0][k]]
    assert changed and all(META[k][1] <= hyp[1][k] <= META[k][2] for k in META)
    assert all(hyp[1][k] == hyp[0][k] for k in T.HYP if k not in META)
    for generation in (0, 1):  # normal runs, without pictures (--noplots) or per-epoch checkpoints
        run = folder / f'generation{generation}'
        assert (run / 'results.csv').exists() and not list(run.glob('*.jpg')) and not list(run.glob('*.png'))
    best = support.data_yaml.read_yaml(folder / 'hyp_evolve.yaml')
    fitness = rows[:, 2] * 0.1 + rows[:, 3] * 0.9
    assert best == pytest.approx(hyp[int(fitness.argmax())], rel=1e-4)
    assert T.parse_args(['--hyp', str(folder / 'hyp_evolve.yaml')]).hyp  # a file --hyp takes
    folder = T.main(argv[:-1] + ['3', '--resume_evolve', str(csv)])  # goes on: one generation more
    lines2 = csv.read_text().splitlines()
    assert len(lines2) == 4 and lines2[:3] == lines and (folder / 'generation2/results.csv').exists()
    assert 'Evolving on from' in capsys.readouterr().out
    for bad in (['--evolve', '2', '--resume'], ['--evolve', '2', '--val-only'], ['--resume_evolve', str(csv)]):
        with pytest.raises(SystemExit):
            T.parse_args(bad)
    (population / 'b.yaml').write_text('lr0: fast\n')  # files that are not what they claim: a message, nothing made
    with pytest.raises(SystemExit, match=r'b.yaml: not a hyp file of numbers'):
        T.main(argv[:-4] + ['--evolve_population', str(population), '--evolve', '2', '--name', 'bad'])
    (tmp_path / 'other.csv').write_text('a,b\n1,2\n')
    with pytest.raises(SystemExit, match=r'other.csv: its columns are not this HYP'):
        T.main(argv[:-4] + ['--evolve', '3', '--resume_evolve', str(tmp_path / 'other.csv')])
    assert not (tmp_path / 'evolve/bad').exists()


def test_autobatch_fits_the_originals_line_and_keeps_16_on_a_cpu(tmp_path, capsys):
    sizes = [1, 2, 4, 8, 16]
    assert support.cli.fit_batch(sizes, [1 + 0.5 * b for b in sizes], 20.2) == 30  # int((20.2 * 0.8 - 1) / 0.5)
    assert support.cli.fit_batch(sizes, [1.5, 2, 3, 5, None], 20) == 8  # below the size that ran out of memory
    assert support.cli.fit_batch(sizes, [1, 1, 1, 1, 1], 20) == 16  # a fit that makes no sense: the default
    assert support.cli.fit_batch(sizes, [1, 2, 4, 8, 16], 10000) == 16  # over 1024: the default
    root = make_shapes_dataset(tmp_path / 'shapes', n_train=4, n_val=2, size=64)
    trainer = T.Trainer(tiny_args(root, tmp_path / 'runs', '--batch', '-1'))
    assert trainer.opt.batch == 16 and 'CUDA not detected, using default CPU batch-size 16' in capsys.readouterr().out
    with pytest.raises(SystemExit):
        support.cli.train_args(['--batch', '-1'], T.HYP, (M.SCALES, M.ARCHITECTURES), world_size=2)


# The original's val.py --save-txt --save-conf and --save-hybrid label files of yolov5n on the first 4 COCO128 images
# at 320, batch 4: rows per file, and the first rows of each
VAL_TXT_ORIGINAL = {
    'conf': {'000000000009': (300, [[45, 0.725637, 0.241523, 0.518226, 0.483046, 0.734165],
                                    [50, 0.637096, 0.738786, 0.50344, 0.510555, 0.500114]]),
             '000000000025': (63, [[23, 0.714654, 0.479846, 0.340697, 0.740301, 0.706086]]),
             '000000000030': (59, [[75, 0.508031, 0.591419, 0.258576, 0.454762, 0.681118]]),
             '000000000034': (14, [[22, 0.342636, 0.486606, 0.685271, 0.909307, 0.900411],
                                   [22, 0.318268, 0.086686, 0.123738, 0.0725978, 0.01282]])},
    'hybrid': {'000000000009': (300, [[49, 0.642859, 0.0792187, 0.148063, 0.148062],
                                      [45, 0.479492, 0.688771, 0.955609, 0.5955]]),
               '000000000025': (63, [[23, 0.185977, 0.901608, 0.206297, 0.129554]]),
               '000000000030': (58, [[75, 0.501188, 0.592138, 0.26, 0.456192],
                                     [58, 0.519219, 0.451121, 0.39825, 0.75729]]),
               '000000000034': (14, [[22, 0.345398, 0.493259, 0.687804, 0.892118]])}}


def test_val_only_save_txt_conf_hybrid_speed_study_and_ensembles_as_the_original(tmp_path, capsys, monkeypatch):
    root = first_coco128_images(tmp_path / 'coco4', 4)

    def val(name, *flags):
        argv = ['--val-only', '--weights', str(shared(WEIGHTS)), '--data', str(root), '--img', '320', '--batch', '4']
        T.run_val_only(T.parse_args(argv + ['--project', str(tmp_path / 'val'), '--name', name, *flags]))
        return tmp_path / 'val' / name, capsys.readouterr().out
    for kind, flags in (('conf', ['--save-txt', '--save-conf']), ('hybrid', ['--save-hybrid'])):
        folder, out = val(kind, *flags)
        assert f'4 labels saved to {folder / "labels"}' in out and 'Validating: 1/1' in out
        for stem, (count, first_rows) in VAL_TXT_ORIGINAL[kind].items():
            rows = np.loadtxt(folder / 'labels' / f'{stem}.txt', ndmin=2)
            assert len(rows) == count and rows.shape[1] == len(first_rows[0]), stem
            for row in first_rows:  # (the order of equal scores may differ)
                assert np.abs(rows - row).max(1).min() < 2e-5, (stem, row)
        row = next(line for line in out.splitlines() if line.split()[:1] == ['all']).split()
        if kind == 'hybrid':  # the labels are among the detections: near-perfect, as the original warns
            assert float(row[5]) > 0.99
    folder, out = val('speed', '--task', 'speed')
    row = next(line for line in out.splitlines() if line.split()[:1] == ['all']).split()
    assert 'Speed:' in out and not list(folder.glob('*.png')) and not list(folder.glob('*.json'))
    _, single = val('single')
    single_row = next(line for line in single.splitlines() if line.split()[:1] == ['all']).split()
    assert row[1:3] == single_row[1:3] and row[3:] != single_row[3:]  # conf 0.25, iou 0.45: other numbers
    monkeypatch.setattr(support.val_benchmarks, 'STUDY_SIZES', [256, 320])
    folder, out = val('study', '--task', 'study')
    table = np.loadtxt(folder / 'study_coco4_yolov5n.txt', ndmin=2)
    assert table.shape == (2, 10) and (table[:, 4:7] == 0).all() and (table[:, 7:] > 0).all()
    assert np.allclose(table[1, :4], [float(v) for v in single_row[3:]], atol=6e-4)  # at 320: the plain run's
    assert cv2.imread(str(folder / 'study.png')) is not None
    folder, out = val('ensemble', '--weights', str(shared(WEIGHTS)), str(shared(WEIGHTS)))
    row = next(line for line in out.splitlines() if line.split()[:1] == ['all']).split()
    assert 'Ensemble created' in out and row == single_row  # twice the same model: its own detections


def test_detect_save_csv_and_a_height_and_width_as_the_original(tmp_path):
    r = run_detect(BUS, '--weights', shared(WEIGHTS), '--img', 320, 256, '--save-csv', '--save-txt', '--save-conf',
                   cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert 'at shape (1, 3, 320, 256)' in r.stdout  # the original's (h, w) too
    run = tmp_path / 'runs/detect/exp'
    original = [[0, 0.922222, 0.564815, 0.155556, 0.468519, 0.418281],
                [0, 0.354938, 0.576389, 0.176543, 0.421296, 0.695256],
                [5, 0.516667, 0.4625, 0.966667, 0.502778, 0.844038],
                [0, 0.159877, 0.596296, 0.218519, 0.462963, 0.863233]]
    np.testing.assert_allclose(np.loadtxt(run / 'labels/bus.txt'), original, atol=2e-6)  # the original's, in order
    assert (run / 'predictions.csv').read_text() == ('Image Name,Prediction,Confidence\nbus.jpg,person,0.42\n'
                                                     'bus.jpg,person,0.70\nbus.jpg,bus,0.84\nbus.jpg,person,0.86\n')
    r = run_detect(BUS, '--weights', shared(WEIGHTS), '--img', 320, 256, 128, cwd=tmp_path)
    assert r.returncode == 2 and 'one or two numbers' in r.stderr


def test_an_ensemble_pools_its_models_boxes_before_nms_as_the_original(tmp_path):
    one = E.load_any(shared(WEIGHTS))
    two = E.load_any([shared(WEIGHTS), shared(WEIGHTS)])
    x = torch.rand(1, 3, 320, 256)
    pooled, single = two(x)[0], one(x)[0]
    assert pooled.shape[1] == 2 * single.shape[1] and torch.allclose(pooled[:, single.shape[1]:], single, atol=1e-5)
    r = run_detect(BUS, '--weights', shared(WEIGHTS), shared(WEIGHTS), '--save-txt', '--save-conf', cwd=tmp_path)
    assert r.returncode == 0 and 'Ensemble created' in r.stdout, r.stderr
    alone = run_detect(BUS, '--weights', shared(WEIGHTS), '--save-txt', '--save-conf', cwd=tmp_path)
    assert alone.returncode == 0
    ensemble, single = (np.loadtxt(tmp_path / f'runs/detect/{name}/labels/bus.txt') for name in ('exp', 'exp2'))
    assert ensemble.shape == single.shape and np.abs(ensemble - single).max() < 1e-5  # twice one model: its boxes
