"""Target assignment: task-aligned (TOOD / YOLOv8 TAL), with a positive for every box however small.

Why task alignment rather than ATSS or FCOS size ranges. The search varies which levels a neck
outputs (P2..P7), so the assigner must not rely on hand-set size ranges per level (FCOS) or on
anchor-box priors per level (ATSS). TAL ranks the points inside a box, over every level at once,
by how well the head already predicts it there, ``score**alpha * IoU**beta``, and keeps the
top-k: a colony in a touching clump gets the points whose predictions fit it, on whichever level
the neck serves it best, and no level-specific constants are needed.

Plain TAL gives a box no positive at all when no point centre falls inside it, which happens for
colonies smaller than the stride (a 3x3 px colony on a stride-8 grid). So the point nearest to
each box centre (over all levels; ties go to the finer level) is always a candidate, and a box
left with no positive after conflicts are resolved (a point claimed by several boxes goes to the
one its prediction overlaps most) takes its best candidate back. Only boxes that need the same
single point (two colonies of a few pixels within one cell of the finest level) can still end
up without a positive: one point cannot represent two boxes.

Ground truth is flattened over the batch (no padding to the largest M), and the point-in-box
test runs in chunks, so dense plates with hundreds of colonies stay within memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Assignment", "TaskAlignedAssigner", "flatten_targets", "pairwise_iou"]


@dataclass
class Assignment:
    """Positive points and their targets, one row per positive (P rows).

    ``batch_index``, ``point_index`` [P] locate the point; ``gt_index`` [P] indexes the targets
    flattened over the batch; ``labels`` [P], ``boxes`` [P, 4] (xyxy) are the assigned target;
    ``scores`` [P] the quality target in [0, 1] (normalised alignment); ``num_gt`` the number of
    ground-truth boxes in the batch.
    """

    batch_index: Tensor
    point_index: Tensor
    gt_index: Tensor
    labels: Tensor
    boxes: Tensor
    scores: Tensor
    num_gt: int


def flatten_targets(
    targets: Sequence[dict[str, Tensor]], device: torch.device | str
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-image ``{boxes, labels}`` -> (boxes [G, 4] float32, labels [G], batch index [G])."""
    boxes = [t["boxes"].reshape(-1, 4).float() for t in targets]
    labels = [t["labels"].reshape(-1).long() for t in targets]
    batch = [torch.full((len(b),), i, dtype=torch.long) for i, b in enumerate(boxes)]
    return torch.cat(boxes).to(device), torch.cat(labels).to(device), torch.cat(batch).to(device)


def pairwise_iou(a: Tensor, b: Tensor, eps: float = 1e-9) -> Tensor:
    """Elementwise IoU of two [P, 4] xyxy box sets."""
    lt = torch.maximum(a[:, :2], b[:, :2])
    rb = torch.minimum(a[:, 2:], b[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(1)
    area_a = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(1)
    area_b = (b[:, 2:] - b[:, :2]).clamp(min=0).prod(1)
    return inter / (area_a + area_b - inter + eps)


class TaskAlignedAssigner:
    """Task-aligned assignment over all levels at once; see the module docstring for why.

    Args:
        topk: candidates kept per box (YOLOv8: 10, TOOD: 13).
        alpha: exponent of the predicted class score in the alignment metric.
        beta: exponent of the IoU; large, so localisation dominates the ranking.
        max_chunk: at most this many box x point booleans are materialised at once.
    """

    def __init__(
        self, topk: int = 10, alpha: float = 0.5, beta: float = 6.0, max_chunk: int = 1 << 25
    ) -> None:
        self.topk = topk
        self.alpha = alpha
        self.beta = beta
        self.max_chunk = max_chunk

    @torch.no_grad()
    def __call__(
        self,
        pred_scores: Tensor,
        pred_boxes: Tensor,
        points: Tensor,
        strides: Tensor,
        level_sizes: Sequence[tuple[int, int]],
        targets: Sequence[dict[str, Tensor]],
    ) -> Assignment:
        """Assign targets to points.

        Args:
            pred_scores: sigmoid class scores [B, N, K].
            pred_boxes: predicted boxes [B, N, 4], xyxy pixels.
            points: point centres [N, 2]; strides: [N]; level_sizes: (H, W) per level.
            targets: per image ``{"boxes": [M, 4] xyxy, "labels": [M]}``.
        """
        device = pred_boxes.device
        num_points = points.shape[0]
        gt_boxes, gt_labels, gt_batch = flatten_targets(targets, device)
        num_gt = gt_boxes.shape[0]
        if num_gt == 0:
            empty = torch.zeros(0, dtype=torch.long, device=device)
            return Assignment(
                empty, empty, empty, empty, gt_boxes, torch.zeros(0, device=device), 0
            )

        g, n = self._candidates(gt_boxes, points, strides, level_sizes)
        b = gt_batch[g]
        iou = pairwise_iou(pred_boxes[b, n].float(), gt_boxes[g])
        score = pred_scores[b, n, gt_labels[g]].float()
        metric = score.pow(self.alpha) * iou.pow(self.beta)

        # Rank candidates within each box by metric: sort by metric, then stably by box.
        order = torch.argsort(metric, descending=True, stable=True)
        order = order[torch.argsort(g[order], stable=True)]
        counts = torch.bincount(g[order], minlength=num_gt)
        starts = torch.cumsum(counts, 0) - counts
        rank = torch.arange(order.numel(), device=device) - starts[g[order]]
        top = order[rank < self.topk]
        best = order[rank == 0]  # one per box: every box has at least its nearest point

        num_keys = pred_boxes.shape[0] * num_points
        key = b * num_points + n  # a point of one image
        pos = _unique_by_key(top, key, iou, num_keys)
        has_pos = torch.zeros(num_gt, dtype=torch.bool, device=device)
        has_pos[g[pos]] = True
        forced = best[~has_pos[g[best]]]
        if forced.numel():
            forced = _unique_by_key(forced, key, iou, num_keys)
            taken = torch.zeros(num_keys, dtype=torch.bool, device=device)
            taken[key[forced]] = True
            pos = torch.cat((pos[~taken[key[pos]]], forced))

        # Quality target (TOOD): metric rescaled so each box's best positive gets its best IoU.
        pg = g[pos]
        max_metric = torch.zeros(num_gt, device=device).scatter_reduce(
            0, pg, metric[pos], "amax", include_self=False
        )
        max_iou = torch.zeros(num_gt, device=device).scatter_reduce(
            0, pg, iou[pos], "amax", include_self=False
        )
        scores = metric[pos] * max_iou[pg] / (max_metric[pg] + 1e-9)
        return Assignment(b[pos], n[pos], pg, gt_labels[pg], gt_boxes[pg], scores, num_gt)

    def _candidates(
        self,
        gt_boxes: Tensor,
        points: Tensor,
        strides: Tensor,
        level_sizes: Sequence[tuple[int, int]],
    ) -> tuple[Tensor, Tensor]:
        """(box, point) candidate pairs: each box's nearest point first, then points inside it."""
        num_gt, num_points = gt_boxes.shape[0], points.shape[0]
        nearest = _nearest_points(gt_boxes, strides, level_sizes)
        pairs_g = [torch.arange(num_gt, device=gt_boxes.device)]
        pairs_n = [nearest]
        px, py = points[:, 0], points[:, 1]
        chunk = max(1, self.max_chunk // max(num_points, 1))
        for start in range(0, num_gt, chunk):
            x1, y1, x2, y2 = gt_boxes[start : start + chunk, :, None].unbind(1)
            inside = (px > x1) & (px < x2) & (py > y1) & (py < y2)
            rows = torch.arange(inside.shape[0], device=inside.device)
            inside[rows, nearest[start : start + chunk]] = False  # already the first candidate
            cg, cn = inside.nonzero(as_tuple=True)
            pairs_g.append(cg + start)
            pairs_n.append(cn)
        return torch.cat(pairs_g), torch.cat(pairs_n)


def _nearest_points(
    gt_boxes: Tensor, strides: Tensor, level_sizes: Sequence[tuple[int, int]]
) -> Tensor:
    """Index of the point nearest each box centre over all levels (ties: finer level)."""
    centre = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2
    best_dist = torch.full((gt_boxes.shape[0],), float("inf"), device=gt_boxes.device)
    best_index = torch.zeros(gt_boxes.shape[0], dtype=torch.long, device=gt_boxes.device)
    offsets = [0]
    for h, w in level_sizes[:-1]:
        offsets.append(offsets[-1] + h * w)
    level_strides = strides[offsets].tolist()
    for (h, w), stride, offset in zip(level_sizes, level_strides, offsets, strict=True):
        ix = torch.floor(centre[:, 0] / stride).clamp(0, w - 1)
        iy = torch.floor(centre[:, 1] / stride).clamp(0, h - 1)
        dist = ((ix + 0.5) * stride - centre[:, 0]) ** 2 + ((iy + 0.5) * stride - centre[:, 1]) ** 2
        better = dist < best_dist
        best_dist = torch.where(better, dist, best_dist)
        best_index = torch.where(better, offset + (iy * w + ix).long(), best_index)
    return best_index


def _unique_by_key(pairs: Tensor, key: Tensor, iou: Tensor, num_keys: int) -> Tensor:
    """Of ``pairs`` sharing a point, keep the one with the highest IoU (first on ties)."""
    k = key[pairs]
    best = torch.full((num_keys,), -1.0, device=pairs.device).scatter_reduce(
        0, k, iou[pairs], "amax"
    )
    winner = iou[pairs] == best[k]
    position = torch.arange(pairs.numel(), device=pairs.device)
    first = torch.full((num_keys,), pairs.numel(), device=pairs.device).scatter_reduce(
        0, k[winner], position[winner], "amin"
    )
    return pairs[winner & (first[k] == position)]
