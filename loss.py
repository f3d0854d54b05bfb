"""
YOLOv5's loss: each label matched to the anchors whose shape is within anchor_t of its own, in its
cell and the two neighbours nearest its centre; a CIoU box loss and a class BCE for the matches, an
objectness BCE for every prediction, with the (detached) IoU as its target.
"""
import math

import torch
import torch.nn as nn

from model import decode_boxes


def bbox_ciou(box1, box2, eps=1e-7):
    """Complete IoU of paired xywh boxes (n, 4): IoU - centre distance term - aspect ratio term."""
    xy1, wh1 = box1.split(2, -1)
    xy2, wh2 = box2.split(2, -1)
    top_left1, bottom_right1 = xy1 - wh1 / 2, xy1 + wh1 / 2
    top_left2, bottom_right2 = xy2 - wh2 / 2, xy2 + wh2 / 2
    inter = (bottom_right1.minimum(bottom_right2) - top_left1.maximum(top_left2)).clamp(0)
    inter = inter.prod(-1)
    iou = inter / (wh1.prod(-1) + wh2.prod(-1) - inter + eps)
    enclosing = bottom_right1.maximum(bottom_right2) - top_left1.minimum(top_left2)
    diagonal2 = (enclosing ** 2).sum(-1) + eps
    # between the centres, as the original: from the corners
    distance2 = ((top_left2 + bottom_right2 - top_left1 - bottom_right1) ** 2).sum(-1) / 4
    angle1 = torch.atan(wh1[:, 0] / wh1[:, 1])
    angle2 = torch.atan(wh2[:, 0] / wh2[:, 1])
    aspect = (4 / math.pi ** 2) * (angle2 - angle1) ** 2
    with torch.no_grad():
        alpha = aspect / (aspect - iou + (1 + eps))
    return iou - (distance2 / diagonal2 + aspect * alpha)


def shape_ratio(wh, anchors):
    """How far each box's (w, h) (n, 2) is from each anchor's (a, 2): the largest of w / anchor w,
    its inverse, and the same for h. The test of assignment, and of autoanchor."""
    ratio = wh[:, None] / anchors[None]
    return torch.max(ratio, 1 / ratio).max(2)[0]


def level_weights(levels):
    """Objectness weight of each level, the finest first (small objects are many and hard)."""
    if levels == 3:
        return [4.0, 1.0, 0.4]
    if levels > 5:
        raise ValueError(f'no objectness weights for {levels} levels: add them to level_weights')
    return [4.0, 1.0, 0.25, 0.06, 0.02][:levels]


class FocalBCE(nn.Module):
    """BCE scaled down for easy examples: * alpha_t * (1 - p_t) ** gamma (Lin et al., 2017)."""
    def __init__(self, pos_weight, gamma=1.5, alpha=0.25):
        super().__init__()
        self.bce = nn.BCEWithLogitsLoss(pos_weight=pos_weight, reduction='none')
        self.gamma = gamma
        self.alpha = alpha

    def forward(self, pred, true):
        prob = torch.sigmoid(pred)
        p_t = true * prob + (1 - true) * (1 - prob)
        alpha_t = true * self.alpha + (1 - true) * (1 - self.alpha)
        return (self.bce(pred, true) * alpha_t * (1.0 - p_t) ** self.gamma).mean()


class YOLOLoss:
    """hyp: the gains box, obj, cls (for 3 levels, 80 classes, 640 pixels), cls_pw, obj_pw,
    anchor_t, fl_gamma, label_smoothing."""
    iou_ratio = 1.0  # objectness target = iou_ratio * IoU + (1 - iou_ratio)

    def __init__(self, model, hyp, img_size=640):
        levels = model.detect.nl
        self.obj_weights = level_weights(levels)
        # The gains scale, so that one hyp file suits every model and size: the terms sum over
        # levels (3 / levels), the class BCE averages classes (nc / 80), objectness every cell.
        self.hyp = dict(hyp, box=hyp['box'] * 3 / levels,
                        cls=hyp['cls'] * model.nc / 80 * 3 / levels,
                        obj=hyp['obj'] * (img_size / 640) ** 2 * 3 / levels)
        device = next(model.parameters()).device
        self.bce_cls = self.bce(hyp['cls_pw'], hyp['fl_gamma'], device)
        self.bce_obj = self.bce(hyp['obj_pw'], hyp['fl_gamma'], device)
        self.cls_pos = 1.0 - 0.5 * hyp['label_smoothing']  # class targets, smoothed
        self.cls_neg = 0.5 * hyp['label_smoothing']
        self.nc = model.detect.nc
        self.na = model.detect.na
        self.anchors = model.detect.anchors  # in grid units; the tensor that autoanchor changes

    @staticmethod
    def bce(pos_weight, focal_gamma, device):
        pos_weight = torch.tensor([pos_weight], device=device)
        if focal_gamma > 0:
            return FocalBCE(pos_weight, focal_gamma)
        return nn.BCEWithLogitsLoss(pos_weight=pos_weight)

    def __call__(self, preds, targets):
        """preds: each level's raw maps (b, na, ny, nx, 5 + nc); targets (n, 6): image, class, xywh.
        Returns the loss times the batch size, and its terms by name."""
        box_loss = torch.zeros(1, device=targets.device)
        obj_loss = torch.zeros(1, device=targets.device)
        cls_loss = torch.zeros(1, device=targets.device)
        tcls, tbox, indices, anchors = self.build_targets(preds, targets)
        for i, (pred, (image, anchor, cell_y, cell_x)) in enumerate(zip(preds, indices)):
            tobj = torch.zeros_like(pred[..., 4])
            if len(image):
                pxywh, _, pcls = pred[image, anchor, cell_y, cell_x].split((4, 1, self.nc), 1)
                # offsets -0.5: the cell's corner (0) less 0.5; in grid units, as tbox
                pbox = decode_boxes(pxywh, -0.5, anchors[i])
                ciou = bbox_ciou(pbox, tbox[i])
                box_loss += (1.0 - ciou).mean()
                iou_target = ciou.detach().clamp(0).type(tobj.dtype)
                ratio = self.iou_ratio
                tobj[image, anchor, cell_y, cell_x] = 1 - ratio + ratio * iou_target
                if self.nc > 1:  # a single class has nothing to classify
                    target = torch.full_like(pcls, self.cls_neg)
                    target[range(len(image)), tcls[i]] = self.cls_pos
                    cls_loss += self.bce_cls(pcls, target)
            obj_loss += self.bce_obj(pred[..., 4], tobj) * self.obj_weights[i]
        terms = dict(box_loss=box_loss * self.hyp['box'], obj_loss=obj_loss * self.hyp['obj'],
                     cls_loss=cls_loss * self.hyp['cls'])
        loss = sum(terms.values()) * preds[0].shape[0]
        return loss, {name: term.detach()[0] for name, term in terms.items()}

    def build_targets(self, preds, targets):
        """targets (n, 6): image, class, xywh normalized. Per level, of each positive sample: class,
        box (xy from its cell's corner, wh) in grid units, (image, anchor, y, x), anchor."""
        tcls = []  # per level
        tbox = []
        indices = []
        matched_anchors = []
        # A label trains its own cell and the two neighbours nearest its centre: a prediction
        # reaches 0.5 beyond its cell. The steps to those cells: none, left, up, right, down.
        steps = torch.tensor([[0, 0], [-1, 0], [0, -1], [1, 0], [0, 1]], device=targets.device)
        for anchors, pred in zip(self.anchors, preds):
            grid_size = torch.tensor(pred.shape, device=targets.device)[[3, 2]].float()  # (nx, ny)
            xy = targets[:, 2:4] * grid_size  # in cells of this level
            wh = targets[:, 4:6] * grid_size
            # the (anchor, label) pairs whose shapes are within anchor_t, anchor by anchor
            fits = shape_ratio(wh, anchors).T < self.hyp['anchor_t']  # (na, labels)
            anchor, label = fits.nonzero().T
            xy = xy[label]
            # the cell on the left if the centre is in the left half of its cell, and so on;
            # never a cell outside the grid
            xy_from_far_side = grid_size - xy
            left, up = ((xy % 1 < 0.5) & (xy > 1)).T
            right, down = ((xy_from_far_side % 1 < 0.5) & (xy_from_far_side > 1)).T
            use = torch.stack((torch.ones_like(left), left, up, right, down))  # (5, pairs)
            step, pair = use.nonzero().T  # one sample per (pair, cell), step by step
            anchor = anchor[pair]
            label = label[pair]
            xy = xy[pair]
            cell = (xy + steps[step] * 0.5).long().clamp(min=0).minimum(grid_size.long() - 1)
            image = targets[label, 0].long()
            indices.append((image, anchor, cell[:, 1], cell[:, 0]))
            tbox.append(torch.cat((xy - cell, wh[label]), 1))  # the box, from its cell's corner
            matched_anchors.append(anchors[anchor])
            tcls.append(targets[label, 1].long())
        return tcls, tbox, indices, matched_anchors
