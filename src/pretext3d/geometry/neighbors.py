"""k-nearest neighbours and neighbourhood reductions for batches of point sets.

All functions work on any device. On CPU with numba, the selection and the gathers run in the
fused kernels of :mod:`pretext3d._kernels`; elsewhere (GPU, or ``PRETEXT3D_NO_NUMBA=1``) they
run as chunked torch code. Memory stays bounded: distances are formed ``rows x N`` at a time
and the reductions never build a ``(B, M, k, C)`` tensor (only ``knn(sorted=True)`` gathers the
neighbours' coordinates to order them).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from pretext3d import _kernels

__all__ = [
    "knn", "ball_query", "gather_max", "gather_sum", "gather_add_leaky_relu", "edge_max_and_moments",
    "neighbour_counts", "uses_fast_kernels",
]

_CHUNK_BYTES = 16 * 2**20  # size of one block of distances: cache-friendly, bounded for large N


def uses_fast_kernels(tensor: Tensor) -> bool:
    """Whether operations on ``tensor`` run in the numba CPU kernels (CPU tensors, and not in a
    forked child of a process that started the kernels' thread pool)."""
    return tensor.device.type == "cpu" and _kernels.parallel_usable()


def _rows_per_chunk(n_ref: int, itemsize: int = 4) -> int:
    return max(1, _CHUNK_BYTES // max(1, n_ref * itemsize))


def knn(points: Tensor, k: int, query: Tensor | None = None, sorted: bool = False) -> Tensor:
    """Indices of the ``k`` nearest ``points`` (squared Euclidean distance) of each query.

    points: (B, N, C) reference set;  query: (B, M, C), defaults to ``points`` (then every point
    is its own nearest neighbour, as in DGCNN);  returns (B, M, k) int64 indices into N.
    With ``sorted=False`` the k indices come in no particular order (cheaper); with
    ``sorted=True`` nearest first. Ties are broken arbitrarily.
    """
    if points.dim() != 3:
        raise ValueError(f"knn expects points of shape (B, N, C), got {tuple(points.shape)}")
    query = points if query is None else query
    if query.dim() != 3 or query.shape[0] != points.shape[0] or query.shape[2] != points.shape[2]:
        raise ValueError(f"query {tuple(query.shape)} does not match points {tuple(points.shape)}")
    n_batch, n_ref, _ = points.shape
    if not 1 <= k <= n_ref:
        raise ValueError(f"k={k} must be between 1 and the number of points ({n_ref})")
    with torch.no_grad():
        points = points.detach()
        query = query.detach()
        if not (torch.isfinite(points).all() and torch.isfinite(query).all()):
            raise ValueError("knn: the points contain NaN or infinite values")
        if points.dtype not in (torch.float32, torch.float64):
            points, query = points.float(), query.float()
        query = query.to(points.dtype)
        ref_sq = (points * points).sum(-1)  # (B, N)
        if uses_fast_kernels(points):
            idx = _knn_cpu_kernel(points, query, ref_sq, k)
        else:
            idx = _knn_torch(points, query, ref_sq, k)
        if sorted:
            d = _squared_distances_at(points, query, ref_sq, idx)
            idx = idx.gather(-1, d.argsort(dim=-1))
    return idx


def ball_query(points: Tensor, query: Tensor, radius: float, neighbours: int) -> Tensor:
    """PointNet++'s ball query: for each query, the first ``neighbours`` points (in index order)
    strictly within ``radius``, padded with the first one found (with index 0 if none is).

    points: (B, N, 3), query: (B, M, 3) -> (B, M, neighbours) int64 indices into N. Distances
    come from coordinate differences (no |a|^2 + |b|^2 - 2ab cancellation at the sphere). On CPU
    a numba kernel scans each query's points in order and stops at ``neighbours`` (~28x faster
    than the torch path at B=8, M=512, N=1024 on 1 thread: benchmarks/bench_ball_query.py);
    elsewhere chunked torch code selects the first inside points with a top-k on their indices.
    """
    if points.dim() != 3 or query.dim() != 3 or points.shape[0] != query.shape[0] or points.shape[2] != 3 or query.shape[2] != 3:
        raise ValueError(f"ball_query expects points (B, N, 3) and query (B, M, 3), got {tuple(points.shape)}, {tuple(query.shape)}")
    if radius <= 0 or neighbours < 1:
        raise ValueError(f"ball_query needs radius > 0 and neighbours >= 1, got {radius}, {neighbours}")
    with torch.no_grad():
        points, query = points.detach(), query.detach()
        if uses_fast_kernels(points):
            out = torch.empty(query.shape[0], query.shape[1], neighbours, dtype=torch.int64)
            _kernels.set_threads(torch.get_num_threads())
            _kernels.ball_query(points.contiguous().numpy(), query.to(points.dtype).contiguous().numpy(),
                                float(radius) ** 2, out.numpy())
            return out
        return _ball_query_torch(points, query.to(points.dtype), radius, neighbours)


def _ball_query_torch(points: Tensor, query: Tensor, radius: float, neighbours: int) -> Tensor:
    n_points = points.shape[1]
    take = min(neighbours, n_points)
    out = torch.empty(query.shape[0], query.shape[1], neighbours, dtype=torch.int64, device=points.device)
    order = torch.arange(n_points, device=points.device)
    rows = _rows_per_chunk(n_points * 3 * query.shape[0], points.element_size())
    radius_sq = float(radius) ** 2
    for s in range(0, query.shape[1], rows):
        offsets = query[:, s : s + rows].double().unsqueeze(2) - points.double().unsqueeze(1)  # as the kernel: float64
        key = torch.where(offsets.square().sum(-1) < radius_sq, order, n_points)  # outside points sort last
        first = key.topk(take, dim=-1, largest=False, sorted=True).values  # (B, r, take)
        found = first < n_points
        pad = torch.where(found[..., :1], first[..., :1], 0)
        chunk = torch.where(found, first, pad)
        if take < neighbours:
            chunk = torch.cat([chunk, pad.expand(-1, -1, neighbours - take)], -1)
        out[:, s : s + rows] = chunk
    return out


def _knn_cpu_kernel(points: Tensor, query: Tensor, ref_sq: Tensor, k: int) -> Tensor:
    _kernels.set_threads(torch.get_num_threads())
    n_batch, n_query = query.shape[:2]
    out = torch.empty(n_batch, n_query, k, dtype=torch.int64)
    rows = _rows_per_chunk(points.shape[1])
    for b in range(n_batch):
        ref_t = points[b].t()
        sq = ref_sq[b].contiguous().numpy()
        for s in range(0, n_query, rows):
            gram = torch.mm(query[b, s : s + rows], ref_t)
            _kernels.knn_select_from_gram(gram.numpy(), sq, k, out[b, s : s + rows].numpy())
    return out


def _knn_torch(points: Tensor, query: Tensor, ref_sq: Tensor, k: int) -> Tensor:
    n_batch, n_query = query.shape[:2]
    out = torch.empty(n_batch, n_query, k, dtype=torch.int64, device=points.device)
    rows = _rows_per_chunk(points.shape[1])
    ref_t = points.transpose(1, 2)
    for s in range(0, n_query, rows):
        # key = |r|^2 - 2 q.r ranks references like |q - r|^2 (|q|^2 is constant per row)
        key = torch.baddbmm(ref_sq[:, None, :], query[:, s : s + rows], ref_t, alpha=-2.0)
        out[:, s : s + rows] = key.topk(k, dim=-1, largest=False, sorted=False).indices
    return out


def _squared_distances_at(points: Tensor, query: Tensor, ref_sq: Tensor, idx: Tensor) -> Tensor:
    """|query_i - points_idx[i, j]|^2: (B, M, k); ref_sq: (B, N) squared norms of points."""
    q_sq = (query * query).sum(-1, keepdim=True)
    cross = torch.einsum("bmc,bmkc->bmk", query, _gather_rows(points, idx))
    return q_sq + ref_sq.gather(1, idx.flatten(1)).view_as(idx) - 2 * cross


def _gather_rows(values: Tensor, idx: Tensor) -> Tensor:
    """values[b, idx[b, i, j]] as (B, M, k, C). Only for small slices (sorting, fallbacks)."""
    n_batch, n_query, k = idx.shape
    flat = idx.reshape(n_batch, n_query * k, 1).expand(-1, -1, values.shape[-1])
    return values.gather(1, flat).view(n_batch, n_query, k, values.shape[-1])


def neighbour_counts(idx: Tensor, n_points: int) -> Tensor:
    """How often each point appears as a neighbour. idx: (B, M, k) -> counts (B, n_points)."""
    n_batch = idx.shape[0]
    offsets = torch.arange(n_batch, device=idx.device).view(-1, 1, 1) * n_points
    counts = torch.bincount((idx + offsets).flatten(), minlength=n_batch * n_points)
    return counts.view(n_batch, n_points)


def gather_max(values: Tensor, idx: Tensor) -> Tensor:
    """Max over each neighbourhood: out[b, i, c] = max_j values[b, idx[b, i, j], c].

    values: (B, N, C);  idx: (B, M, k)  ->  (B, M, C). Differentiable in ``values``: the
    gradient goes to the neighbour that attained the maximum (one of them on ties).
    """
    _check_gather_args(values, idx)
    if uses_fast_kernels(values):
        return _GatherMaxCPU.apply(values, idx)
    return _chunked_over_queries(values, idx, lambda g: g.max(dim=2).values)


def gather_sum(values: Tensor, idx: Tensor) -> Tensor:
    """Sum over each neighbourhood: out[b, i, c] = sum_j values[b, idx[b, i, j], c].

    values: (B, N, C);  idx: (B, M, k)  ->  (B, M, C). Differentiable in ``values``.
    """
    _check_gather_args(values, idx)
    if uses_fast_kernels(values):
        return _GatherSumCPU.apply(values, idx)
    return _chunked_over_queries(values, idx, lambda g: g.sum(dim=2))


def gather_add_leaky_relu(values: Tensor, centres: Tensor, idx: Tensor, slope: float) -> Tensor:
    """Every edge's activation: out[b, i, j] = leaky_relu(values[b, idx[b, i, j]] + centres[b, i]).

    values: (B, N, C);  centres: (B, M, C);  idx: (B, M, k)  ->  (B, M, k, C), differentiable in
    ``values`` and ``centres``. On CPU this is one fused pass (the gather, the sum and the
    activation write one tensor instead of three; the backward writes one edge gradient): the first
    layer of a multi-layer EdgeConv block in training, where ``values`` and ``centres`` already
    carry BatchNorm's scale and shift.
    """
    _check_gather_args(values, idx)
    if centres.shape != (*idx.shape[:2], values.shape[2]):
        raise ValueError(f"expected centres {(*idx.shape[:2], values.shape[2])}, got {tuple(centres.shape)}")
    if uses_fast_kernels(values) and values.dtype == centres.dtype:
        return _GatherAddLeakyCPU.apply(values, centres, idx, float(slope))
    return torch.nn.functional.leaky_relu(_gather_rows(values, idx) + centres.unsqueeze(2), slope)


def edge_max_and_moments(edges: Tensor, sign: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The edge that wins a max over neighbours, and the moments a BatchNorm needs, in one read.

    edges: (B, M, k, C);  sign: (C,) of +1 / -1  ->  best (B, M, C) = edges[b, i, j*, c] with
    j* = argmax_j sign[c] edges[b, i, j, c] (the max for +1, the min for -1); total (C,) =
    sum over b, i, j of edges; total_sq (C,) = the sum of squares; the two sums in float64.
    Differentiable in ``edges``: best's gradient goes to the winning edge (one of them on ties).
    For a BatchNorm s e + t followed by an increasing activation and a max over k, the winner
    of sign(s) e is the winner of the whole map, so the map is applied to ``best`` alone.
    """
    if edges.dim() != 4 or sign.shape != edges.shape[-1:]:
        raise ValueError(f"expected edges (B, M, k, C) and sign (C,), got {tuple(edges.shape)} and {tuple(sign.shape)}")
    if uses_fast_kernels(edges) and edges.dtype in (torch.float32, torch.float64):
        return _EdgeMaxMomentsCPU.apply(edges, sign.to(edges.dtype))
    arg = (edges.detach() * sign).argmax(dim=2, keepdim=True)
    best = edges.gather(2, arg).squeeze(2)
    total = edges.sum(dim=(0, 1, 2), dtype=torch.float64)
    return best, total, (edges * edges).sum(dim=(0, 1, 2), dtype=torch.float64)


def _check_gather_args(values: Tensor, idx: Tensor) -> None:
    """Shapes, and indices in range (the CPU kernels do not bounds-check)."""
    if values.dim() != 3 or idx.dim() != 3 or values.shape[0] != idx.shape[0] or idx.shape[2] < 1:
        raise ValueError(
            f"expected values (B, N, C) and idx (B, M, k >= 1), got {tuple(values.shape)} and {tuple(idx.shape)}"
        )
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= values.shape[1]):
        raise IndexError(f"neighbour indices must lie in [0, {values.shape[1]}), found {int(idx.min())}..{int(idx.max())}")
    if uses_fast_kernels(values) and values.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"the CPU kernels support float32/float64, got {values.dtype}")


def _chunked_over_queries(values: Tensor, idx: Tensor, reduce) -> Tensor:
    """Apply ``reduce`` to (B, rows, k, C) gathered slices, a bounded number of rows at a time."""
    n_batch, n_query, k = idx.shape
    per_row = n_batch * k * values.shape[-1] * values.element_size()
    rows = max(1, _CHUNK_BYTES // max(1, per_row))
    parts = [reduce(_gather_rows(values, idx[:, s : s + rows])) for s in range(0, n_query, rows)]
    return torch.cat(parts, dim=1)


class _GatherMaxCPU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, values: Tensor, idx: Tensor) -> Tensor:  # type: ignore[override]
        _kernels.set_threads(torch.get_num_threads())
        values_c = values.detach().contiguous()
        idx_c = idx.contiguous()
        out = values_c.new_empty(idx.shape[0], idx.shape[1], values.shape[2])
        if ctx.needs_input_grad[0]:
            arg = torch.empty(out.shape, dtype=torch.int32)  # half the memory of int64
            _kernels.gather_max_arg(values_c.numpy(), idx_c.numpy(), out.numpy(), arg.numpy())
            ctx.save_for_backward(arg)
            ctx.n_points = values.shape[1]
        else:
            _kernels.gather_max(values_c.numpy(), idx_c.numpy(), out.numpy())
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        (arg,) = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        grad_values = grad_out.new_zeros(grad_out.shape[0], ctx.n_points, grad_out.shape[2])
        _kernels.scatter_max_grad(grad_out.numpy(), arg.numpy(), grad_values.numpy())
        return grad_values, None


class _GatherSumCPU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, values: Tensor, idx: Tensor) -> Tensor:  # type: ignore[override]
        _kernels.set_threads(torch.get_num_threads())
        values_c = values.detach().contiguous()
        idx_c = idx.contiguous()
        out = values_c.new_empty(idx.shape[0], idx.shape[1], values.shape[2])
        _kernels.gather_sum(values_c.numpy(), idx_c.numpy(), out.numpy())
        ctx.save_for_backward(idx_c)
        ctx.n_points = values.shape[1]
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        # The adjoint of a gather-sum is a scatter-sum; run it as a gather over the transposed
        # graph (CSR) so that every output row has one writer: 3 ms instead of 13 ms (C=64) and
        # 5 ms instead of 36 ms (C=256) for B=16, N=1024, k=20 against a scatter kernel that
        # splits work by channel blocks.
        (idx,) = ctx.saved_tensors
        n_batch, n_query, k = idx.shape
        n_points = ctx.n_points
        offsets, sources = _transposed_graph(idx, n_points, per_edge=False)
        flat = grad_out.contiguous().view(n_batch * n_query, -1)
        grad_values = flat.new_empty(n_batch * n_points, flat.shape[1])
        _kernels.csr_row_sum(flat.numpy(), offsets.numpy(), sources.numpy(), grad_values.numpy())
        return grad_values.view(n_batch, n_points, -1), None


def _transposed_graph(idx: Tensor, n_points: int, per_edge: bool) -> tuple[Tensor, Tensor]:
    """CSR offsets (B*n_points + 1,) and sources (B*M*k,) of who has each point as a neighbour."""
    offsets = torch.empty(idx.shape[0] * n_points + 1, dtype=torch.int64)
    sources = torch.empty(idx.numel(), dtype=torch.int64)
    _kernels.reverse_neighbourhoods(idx.numpy(), n_points, offsets.numpy(), sources.numpy(), per_edge)
    return offsets, sources


class _GatherAddLeakyCPU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, values: Tensor, centres: Tensor, idx: Tensor, slope: float) -> Tensor:  # type: ignore[override]
        _kernels.set_threads(torch.get_num_threads())
        values_c, centres_c = values.detach().contiguous(), centres.detach().contiguous()
        idx_c = idx.contiguous()
        out = values_c.new_empty(*idx.shape, values.shape[2])
        _kernels.gather_add_leaky(values_c.numpy(), centres_c.numpy(), idx_c.numpy(), slope, out.numpy())
        ctx.save_for_backward(out, idx_c)
        ctx.slope, ctx.n_points = slope, values.shape[1]
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        out, idx = ctx.saved_tensors
        _kernels.set_threads(torch.get_num_threads())
        grad_out = grad_out.contiguous()
        grad_pre = torch.empty_like(grad_out)
        grad_centres = grad_out.new_empty(out.shape[0], out.shape[1], out.shape[3])
        _kernels.leaky_grad_and_row_sum(grad_out.numpy(), out.numpy(), ctx.slope, grad_pre.numpy(), grad_centres.numpy())
        # the values' gradient sums the edges that point at each point: a gather over the
        # transposed graph, one writer per output row (as gather_sum's backward). Writing
        # grad_pre first measured faster than applying the slope inside that gather (40 against
        # 70 ms for B 16, N 1024, k 20, C 64: the gather would read two scattered rows per edge)
        offsets, sources = _transposed_graph(idx, ctx.n_points, per_edge=True)
        grad_values = grad_pre.new_empty(idx.shape[0] * ctx.n_points, grad_pre.shape[-1])
        _kernels.csr_row_sum(grad_pre.view(-1, grad_pre.shape[-1]).numpy(), offsets.numpy(), sources.numpy(), grad_values.numpy())
        return grad_values.view(idx.shape[0], ctx.n_points, -1), grad_centres, None, None


class _EdgeMaxMomentsCPU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, edges: Tensor, sign: Tensor) -> tuple[Tensor, Tensor, Tensor]:  # type: ignore[override]
        _kernels.set_threads(torch.get_num_threads())
        edges_c = edges.detach().contiguous()
        n_batch, n_query, _, channels = edges.shape
        best = edges_c.new_empty(n_batch, n_query, channels)
        arg = torch.empty(n_batch, n_query, channels, dtype=torch.int64)
        n_blocks = max(1, min(n_batch * n_query, 64))
        partial_sum = torch.empty(n_blocks, channels, dtype=torch.float64)
        partial_sq = torch.empty_like(partial_sum)
        _kernels.edge_max_and_moments(edges_c.numpy(), sign.contiguous().numpy(), best.numpy(), arg.numpy(),
                                      partial_sum.numpy(), partial_sq.numpy())
        ctx.save_for_backward(edges_c, arg)
        return best, partial_sum.sum(0), partial_sq.sum(0)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_best: Tensor, grad_total: Tensor, grad_total_sq: Tensor):  # type: ignore[override]
        # d total / d e = 1, d total_sq / d e = 2 e, and the winners' share: one dense write
        edges, arg = ctx.saved_tensors
        _kernels.set_threads(torch.get_num_threads())
        grad = torch.empty_like(edges)
        _kernels.edge_max_and_moments_grad(
            edges.numpy(), arg.numpy(), grad_best.contiguous().numpy(), grad_total.to(edges.dtype).numpy(),
            grad_total_sq.to(edges.dtype).numpy(), grad.numpy(),
        )
        return grad, None
