"""Hand-written CPU kernels (numba) for the few operations where plain torch is the bottleneck.

Why these exist (measured on the 2-core CPU machine this project is developed on, B=16, N=1024,
k=20; see ``benchmarks/bench_dgcnn.py``):

* exact k-nearest selection: ``torch.topk`` over 16k rows of 1024 takes ~70 ms per DGCNN layer;
  the block-bound selection below takes ~15 ms for the same rows with the same index sets (up
  to the order among exactly tied distances);
* gather-max over neighbours: ``values[idx].amax(2)`` materialises (B, N, k, C) and takes
  ~160 ms at C=256 (~30 ms when chunked); the fused loop takes ~5 ms;
* exact farthest point sampling: a loop in numba beats both a torch loop and ``fpsample``
  (``benchmarks/bench_fps.py``);
* the two-layer EdgeConv blocks of the point-wise DGCNN in training: the first layer's
  activated edges in one gather (``gather_add_leaky``, its backward writing one (B, N, k, C)
  gradient instead of three), the last layer's max over k and BatchNorm moments in one read
  (``edge_max_and_moments``) and its adjoint in one write, instead of torch's separate gather,
  add, BatchNorm, LeakyReLU and max passes and their backward passes over the edges: one
  EdgeConv(64, [64, 64]) block forward + backward, B=16, 0.26 s against 0.46 s;
* BatchNorm + activation over the rows of per-point layers in training (``affine_act`` and
  its backward; see ``models/batchnorm_act.py``): the (rows, C) tensor is read or written three
  times forward and five times backward, against six and eight for torch's BatchNorm then
  ReLU; 64 against 90 ms for 32k rows of 1024 channels. A last layer whose per-point output is
  not wanted is pooled as it is made (``affine_act_pool``): 80 against 204 ms with max+avg
  pooling (``benchmarks/bench_batchnorm_act.py``).

Every kernel has a pure-torch twin in the calling module; the tests check that both agree,
and the torch twin is what runs on GPUs or when numba is unavailable (``PRETEXT3D_NO_NUMBA=1``).
All kernels take C-contiguous arrays and write into caller-provided outputs.
"""

from __future__ import annotations

import os

import numpy as np

try:  # numba is a hard dependency, but the package must still import (and run) without it.
    if os.environ.get("PRETEXT3D_NO_NUMBA", "") not in ("", "0"):
        raise ImportError("disabled by PRETEXT3D_NO_NUMBA")
    import numba
    from numba import njit, prange

    AVAILABLE = True
except ImportError:  # pragma: no cover - exercised only on machines without numba
    AVAILABLE = False

__all__ = ["AVAILABLE", "parallel_usable", "set_threads"]

# The process whose numba thread pool has been started. Numba's OpenMP pool (its default
# threading layer here; 2x faster than its fork-safe 'workqueue' pool for these kernels)
# aborts a forked child that launches a parallel kernel, and DataLoader workers are forked
# children: such a child must use the serial kernels or the torch code paths instead.
_pool_pid: int | None = None


def parallel_usable() -> bool:
    """Whether this process may launch parallel numba kernels."""
    return AVAILABLE and (_pool_pid is None or _pool_pid == os.getpid())


def set_threads(n: int) -> None:
    """Call before every parallel kernel: use at most ``n`` threads (torch's setting) and
    remember which process started the pool."""
    global _pool_pid
    if AVAILABLE:
        _pool_pid = os.getpid()
        numba.set_num_threads(max(1, min(int(n), numba.config.NUMBA_NUM_THREADS)))


if AVAILABLE:
    _BLOCK = 16  # block size of the selection bound; 8 and 16 measured equal, 32 slower

    @njit(inline="always", cache=True)
    def _sift_down_from(heap_val, heap_idx, size, pos):  # pragma: no cover - compiled
        """Move the entry at ``pos`` of a max-heap down until both children are smaller."""
        val = heap_val[pos]
        ind = heap_idx[pos]
        while True:
            child = 2 * pos + 1
            if child >= size:
                break
            if child + 1 < size and heap_val[child + 1] > heap_val[child]:
                child += 1
            if heap_val[child] > val:
                heap_val[pos] = heap_val[child]
                heap_idx[pos] = heap_idx[child]
                pos = child
            else:
                break
        heap_val[pos] = val
        heap_idx[pos] = ind

    @njit(inline="always", cache=True)
    def _sift_down(heap_val, heap_idx, size):  # pragma: no cover - compiled
        """Restore a max-heap whose root was just replaced."""
        _sift_down_from(heap_val, heap_idx, size, 0)

    @njit(inline="always", cache=True)
    def _heapify(heap_val, heap_idx, size):  # pragma: no cover - compiled
        for start in range(size // 2 - 1, -1, -1):
            _sift_down_from(heap_val, heap_idx, size, start)

    @njit(inline="always", cache=True)
    def _block_minima(key, block_min):  # pragma: no cover - compiled
        """block_min[b] = min(key[16 b : 16 b + 16]) for the whole blocks of ``key``."""
        for b in range(key.shape[0] // _BLOCK):
            lo = key[b * _BLOCK]
            for q in range(1, _BLOCK):
                v = key[b * _BLOCK + q]
                if v < lo:
                    lo = v
            block_min[b] = lo

    @njit(inline="always", cache=True)
    def _k_smallest(key, k, block_min, cand, heap_val, heap_idx, out_row):  # pragma: no cover
        """Indices of the k smallest entries of ``key`` (any order) into ``out_row``;
        ``block_min`` must hold the minima of key's whole blocks of 16.

        Bound: the k-th smallest of the block minima is >= the k-th smallest key (the k blocks
        with the smallest minima hold k distinct keys no larger than it). Only keys under that
        bound can be among the k smallest, and they lie in blocks whose minimum is under it, so
        only those few blocks are scanned and a heap runs over the few candidates they hold.
        """
        m = key.shape[0]
        n_blocks = m // _BLOCK
        n_cand = 0
        if n_blocks >= k:
            for j in range(k):
                heap_val[j] = block_min[j]
                heap_idx[j] = j
            _heapify(heap_val, heap_idx, k)
            for b in range(k, n_blocks):
                if block_min[b] < heap_val[0]:
                    heap_val[0] = block_min[b]
                    _sift_down(heap_val, heap_idx, k)
            bound = heap_val[0]
            for b in range(n_blocks):
                if block_min[b] <= bound:
                    for j in range(b * _BLOCK, (b + 1) * _BLOCK):
                        if key[j] <= bound:
                            cand[n_cand] = j
                            n_cand += 1
            for j in range(n_blocks * _BLOCK, m):  # the tail outside whole blocks
                cand[n_cand] = j
                n_cand += 1
        else:
            for j in range(m):
                cand[j] = j
            n_cand = m
        for j in range(k):
            heap_val[j] = key[cand[j]]
            heap_idx[j] = cand[j]
        _heapify(heap_val, heap_idx, k)
        for q in range(k, n_cand):
            j = cand[q]
            if key[j] < heap_val[0]:
                heap_val[0] = key[j]
                heap_idx[0] = j
                _sift_down(heap_val, heap_idx, k)
        for j in range(k):
            out_row[j] = heap_idx[j]

    @njit(parallel=True, cache=True)
    def knn_select_from_gram(gram, ref_sq, k, out):  # pragma: no cover - compiled
        """k nearest references per query row from inner products.

        gram: (R, M) query . reference;  ref_sq: (M,) squared reference norms;
        out: (R, k) int64. The squared distance |q - r|^2 = |q|^2 + ref_sq - 2 gram; |q|^2 is
        constant along a row, so the key ref_sq - 2 gram ranks the same way.
        """
        rows, m = gram.shape
        for r in prange(rows):
            key = np.empty(m, gram.dtype)
            block_min = np.empty(m // _BLOCK + 1, gram.dtype)
            cand = np.empty(m, np.int64)
            heap_val = np.empty(k, gram.dtype)
            heap_idx = np.empty(k, np.int64)
            g = gram[r]
            for j in range(m):
                key[j] = ref_sq[j] - (g[j] + g[j])  # 2 g in the input's own precision
            _block_minima(key, block_min)
            _k_smallest(key, k, block_min, cand, heap_val, heap_idx, out[r])

    @njit(parallel=True, cache=True)
    def gather_max(values, idx, out):  # pragma: no cover - compiled
        """out[b, i, c] = max_j values[b, idx[b, i, j], c].

        values: (B, N, C); idx: (B, M, k) int64 in [0, N); out: (B, M, C).
        """
        nb, m, k = idx.shape
        ch = values.shape[2]
        for t in prange(nb * m):
            b = t // m
            i = t - b * m
            o = out[b, i]
            src = values[b, idx[b, i, 0]]
            for c in range(ch):
                o[c] = src[c]
            for j in range(1, k):
                src = values[b, idx[b, i, j]]
                for c in range(ch):
                    if src[c] > o[c]:
                        o[c] = src[c]

    @njit(parallel=True, cache=True)
    def gather_max_arg(values, idx, out, arg):  # pragma: no cover - compiled
        """gather_max that also records arg[b, i, c] = the winning point index (for backward)."""
        nb, m, k = idx.shape
        ch = values.shape[2]
        for t in prange(nb * m):
            b = t // m
            i = t - b * m
            o = out[b, i]
            a = arg[b, i]
            p = idx[b, i, 0]
            src = values[b, p]
            for c in range(ch):
                o[c] = src[c]
                a[c] = p
            for j in range(1, k):
                p = idx[b, i, j]
                src = values[b, p]
                for c in range(ch):
                    if src[c] > o[c]:
                        o[c] = src[c]
                        a[c] = p

    @njit(parallel=True, cache=True)
    def scatter_max_grad(grad_out, arg, grad_values):  # pragma: no cover - compiled
        """grad_values[b, arg[b, i, c], c] += grad_out[b, i, c]  (grad_values zero-filled).

        Work is split by (cloud, channel block) so that no two threads write the same element.
        """
        nb, m, ch = grad_out.shape
        cb = 16
        n_cb = (ch + cb - 1) // cb
        for t in prange(nb * n_cb):
            b = t // n_cb
            c0 = (t - b * n_cb) * cb
            c1 = min(ch, c0 + cb)
            for i in range(m):
                for c in range(c0, c1):
                    grad_values[b, arg[b, i, c], c] += grad_out[b, i, c]

    @njit(parallel=True, cache=True)
    def gather_sum(values, idx, out):  # pragma: no cover - compiled
        """out[b, i, c] = sum_j values[b, idx[b, i, j], c]."""
        nb, m, k = idx.shape
        ch = values.shape[2]
        for t in prange(nb * m):
            b = t // m
            i = t - b * m
            o = out[b, i]
            for c in range(ch):
                o[c] = 0.0
            for j in range(k):
                src = values[b, idx[b, i, j]]
                for c in range(ch):
                    o[c] += src[c]

    @njit(parallel=True, cache=True)
    def gather_add_leaky(values, centres, idx, slope, out):  # pragma: no cover - compiled
        """out[b, i, j, c] = leaky(values[b, idx[b, i, j], c] + centres[b, i, c]), where
        leaky(v) = v for v > 0 and slope * v otherwise.

        values: (B, N, C); centres: (B, M, C); idx: (B, M, k); out: (B, M, k, C).
        """
        nb, m, k = idx.shape
        ch = values.shape[2]
        for t in prange(nb * m):
            b = t // m
            i = t - b * m
            ctr = centres[b, i]
            for j in range(k):
                src = values[b, idx[b, i, j]]
                o = out[b, i, j]
                for c in range(ch):
                    v = src[c] + ctr[c]
                    o[c] = v if v > 0 else v * slope

    @njit(parallel=True, cache=True)
    def leaky_grad_and_row_sum(grad, out, slope, grad_pre, grad_rows):  # pragma: no cover - compiled
        """The gradient through a leaky ReLU from its output, and its sum over the k axis:
        grad_pre = grad * (1 if out > 0 else slope);  grad_rows[b, i, c] = sum_j grad_pre[b, i, j, c].

        grad, out, grad_pre: (B, M, k, C);  grad_rows: (B, M, C). (out > 0 exactly where the
        input was > 0, so the output is enough.)
        """
        nb, m, k, ch = grad.shape
        for t in prange(nb * m):
            b = t // m
            i = t - b * m
            acc = grad_rows[b, i]
            for c in range(ch):
                acc[c] = 0.0
            for j in range(k):
                g = grad[b, i, j]
                o = out[b, i, j]
                gp = grad_pre[b, i, j]
                for c in range(ch):
                    v = g[c] if o[c] > 0 else g[c] * slope
                    gp[c] = v
                    acc[c] += v

    @njit(parallel=True, cache=True)
    def edge_max_and_moments(edges, sign, best, arg, partial_sum, partial_sq):  # pragma: no cover - compiled
        """One read of edges (B, M, k, C): over the k axis, arg[b, i, c] = the first j with the
        largest sign[c] * edges[b, i, j, c] and best[b, i, c] = edges[b, i, arg, c]; and every
        channel's sum and sum of squares, in float64, per block of rows: partial_sum,
        partial_sq (n_blocks, C), to be added up by the caller.
        """
        nb, m, k, ch = edges.shape
        rows = nb * m
        n_blocks = partial_sum.shape[0]
        for blk in prange(n_blocks):
            ps = partial_sum[blk]
            pq = partial_sq[blk]
            for c in range(ch):
                ps[c] = 0.0
                pq[c] = 0.0
            for r in range(blk * rows // n_blocks, (blk + 1) * rows // n_blocks):
                b = r // m
                i = r - b * m
                e = edges[b, i]
                bo = best[b, i]
                a = arg[b, i]
                for c in range(ch):
                    v = e[0, c]
                    bo[c] = v
                    a[c] = 0
                    ps[c] += v
                    pq[c] += v * v
                for j in range(1, k):
                    for c in range(ch):
                        v = e[j, c]
                        ps[c] += v
                        pq[c] += v * v
                        if sign[c] * v > sign[c] * bo[c]:
                            bo[c] = v
                            a[c] = j

    @njit(parallel=True, cache=True)
    def edge_max_and_moments_grad(edges, arg, grad_best, grad_total, grad_total_sq, grad):  # pragma: no cover - compiled
        """The adjoint of ``edge_max_and_moments`` in one write:
        grad[b, i, j, c] = grad_total[c] + 2 grad_total_sq[c] edges[b, i, j, c]
                           + (grad_best[b, i, c] if j == arg[b, i, c] else 0).
        """
        nb, m, k, ch = edges.shape
        for t in prange(nb * m):
            b = t // m
            i = t - b * m
            e = edges[b, i]
            g = grad[b, i]
            for j in range(k):
                for c in range(ch):
                    g[j, c] = grad_total[c] + 2.0 * grad_total_sq[c] * e[j, c]
            a = arg[b, i]
            gb = grad_best[b, i]
            for c in range(ch):
                g[a[c], c] += gb[c]

    @njit(parallel=True, cache=True)
    def affine_act(x, scale, shift, slope, out):  # pragma: no cover - compiled
        """out[r, c] = act(scale[c] x[r, c] + shift[c]), act(v) = v if v > 0 else slope v.
        x, out: (R, C); scale, shift: (C,) in x's dtype."""
        rows, ch = x.shape
        for r in prange(rows):
            xr = x[r]
            o = out[r]
            for c in range(ch):
                v = scale[c] * xr[c] + shift[c]
                o[c] = v if v > 0 else slope * v

    @njit(parallel=True, cache=True)
    def affine_act_grad_sums(grad, x, scale, shift, slope, partial_g, partial_gx):  # pragma: no cover - compiled
        """The reductions of BatchNorm's backward through the activation, in float64 by blocks of
        rows: with g'[r, c] = grad[r, c] act'(scale[c] x[r, c] + shift[c]), partial_g[t, c] = sum of
        g' and partial_gx[t, c] = sum of g' x over the t-th of T equal row blocks (T = rows of
        partial_g; the caller adds them). With grad = x, scale 0 and shift 1: the sums of x and
        x^2, BatchNorm's forward statistics."""
        rows, ch = x.shape
        n_blocks = partial_g.shape[0]
        per_block = (rows + n_blocks - 1) // n_blocks
        for t in prange(n_blocks):
            pg = partial_g[t]
            pgx = partial_gx[t]
            pg[:] = 0.0
            pgx[:] = 0.0
            for r in range(t * per_block, min(rows, (t + 1) * per_block)):
                xr = x[r]
                gr = grad[r]
                for c in range(ch):
                    g = gr[c] if scale[c] * xr[c] + shift[c] > 0 else slope * gr[c]
                    pg[c] += g
                    pgx[c] += np.float64(g) * xr[c]

    @njit(parallel=True, cache=True)
    def affine_act_grad(grad, x, scale, shift, slope, coef_g, centre, coef_x, offset, out):  # pragma: no cover - compiled
        """out[r, c] = coef_g[c] g'[r, c] + coef_x[c] (x[r, c] - centre[c]) + offset[c], with g' as
        in ``affine_act_grad_sums``: BatchNorm's input gradient once the sums are known."""
        rows, ch = x.shape
        for r in prange(rows):
            xr = x[r]
            gr = grad[r]
            o = out[r]
            for c in range(ch):
                g = gr[c] if scale[c] * xr[c] + shift[c] > 0 else slope * gr[c]
                o[c] = coef_g[c] * g + coef_x[c] * (xr[c] - centre[c]) + offset[c]

    @njit(parallel=True, cache=True)
    def affine_act_pool(x, scale, shift, slope, best, arg, total):  # pragma: no cover - compiled
        """``affine_act`` followed by pooling over each cloud's points, without writing the
        activations: for x (B*n, C), the rows of B clouds of n points, and v = act(scale x + shift),
        best[b, c] = max over the cloud's points of v, arg[b, c] = the first point attaining it,
        total[b, c] = the sum of v (float64)."""
        nb, ch = best.shape
        n_points = x.shape[0] // nb
        for b in prange(nb):
            bo = best[b]
            a = arg[b]
            tot = total[b]
            tot[:] = 0.0
            for n in range(n_points):
                xr = x[b * n_points + n]
                for c in range(ch):
                    v = scale[c] * xr[c] + shift[c]
                    v = v if v > 0 else slope * v
                    tot[c] += v
                    if n == 0 or v > bo[c]:
                        bo[c] = v
                        a[c] = n

    @njit(inline="always", cache=True)
    def _pooled_grad(xr, c, n, scale, shift, slope, a, gb, gm):  # pragma: no cover - compiled
        """g' of one activation under max and mean pooling: (gm + gb if n won) act'(pre)."""
        g = gm[c] + gb[c] if a[c] == n else gm[c]
        return g if scale[c] * xr[c] + shift[c] > 0 else slope * g

    @njit(parallel=True, cache=True)
    def affine_act_pool_grad_sums(x, scale, shift, slope, arg, grad_best, grad_mean, partial_g, partial_gx):  # pragma: no cover - compiled
        """The reductions of the pooled form's backward, per cloud (partial_* (B, C), float64): the
        activation's gradient is g[b, n, c] = grad_mean[b, c] + (grad_best[b, c] if n == arg[b, c]),
        with grad_mean already divided by n; g' = g act'(pre), partial_g = sum of g', partial_gx =
        sum of g' x over the cloud's points."""
        nb, ch = arg.shape
        n_points = x.shape[0] // nb
        for b in prange(nb):
            pg = partial_g[b]
            pgx = partial_gx[b]
            pg[:] = 0.0
            pgx[:] = 0.0
            a = arg[b]
            gb = grad_best[b]
            gm = grad_mean[b]
            for n in range(n_points):
                xr = x[b * n_points + n]
                for c in range(ch):
                    g = _pooled_grad(xr, c, n, scale, shift, slope, a, gb, gm)
                    pg[c] += g
                    pgx[c] += np.float64(g) * xr[c]

    @njit(parallel=True, cache=True)
    def affine_act_pool_grad(x, scale, shift, slope, arg, grad_best, grad_mean, coef_g, centre, coef_x, offset, out):  # pragma: no cover - compiled
        """out[r, c] = coef_g[c] g'[r, c] + coef_x[c] (x[r, c] - centre[c]) + offset[c], g' as in
        ``affine_act_pool_grad_sums``."""
        nb, ch = arg.shape
        n_points = x.shape[0] // nb
        for r in prange(x.shape[0]):
            b = r // n_points
            n = r - b * n_points
            xr = x[r]
            o = out[r]
            a = arg[b]
            gb = grad_best[b]
            gm = grad_mean[b]
            for c in range(ch):
                g = _pooled_grad(xr, c, n, scale, shift, slope, a, gb, gm)
                o[c] = coef_g[c] * g + coef_x[c] * (xr[c] - centre[c]) + offset[c]

    @njit(cache=True)
    def reverse_neighbourhoods(idx, n_points, offsets, sources, per_edge=False):  # pragma: no cover - compiled
        """The transposed graph as CSR, by a counting sort of the edges on their target point.

        idx: (B, M, k) neighbours of M queries among n_points;  offsets: (B*n_points + 1,) and
        sources: (B*M*k,) outputs: the queries (as b*M + i) that have point q = b*n_points + p
        as a neighbour are sources[offsets[q]:offsets[q+1]]; with ``per_edge`` the edges
        themselves, as (b*M + i)*k + j (rows of a (B*M*k, C) array of per-edge values).
        """
        nb, m, k = idx.shape
        offsets[:] = 0
        for b in range(nb):
            for i in range(m):
                for j in range(k):
                    offsets[b * n_points + idx[b, i, j] + 1] += 1
        for q in range(nb * n_points):
            offsets[q + 1] += offsets[q]
        fill = offsets[:-1].copy()
        for b in range(nb):
            for i in range(m):
                for j in range(k):
                    q = b * n_points + idx[b, i, j]
                    sources[fill[q]] = (b * m + i) * k + j if per_edge else b * m + i
                    fill[q] += 1

    @njit(parallel=True, cache=True)
    def csr_row_sum(values, offsets, sources, out):  # pragma: no cover - compiled
        """out[q] = sum over e in [offsets[q], offsets[q+1]) of values[sources[e]].

        values: (R, C);  out: (Q, C). Each output row is owned by one thread: no write races.
        """
        ch = values.shape[1]
        for q in prange(out.shape[0]):
            o = out[q]
            for c in range(ch):
                o[c] = 0.0
            for e in range(offsets[q], offsets[q + 1]):
                src = values[sources[e]]
                for c in range(ch):
                    o[c] += src[c]

    @njit(cache=True)
    def farthest_point_sample_one(points, start, out):  # pragma: no cover - compiled
        """Exact FPS of one cloud (points (N, 3), out (m,)); serial, for per-item data loading."""
        n = points.shape[0]
        m = out.shape[0]
        dist = np.full(n, np.inf, dtype=np.float64)
        cur = start
        for s in range(m):
            out[s] = cur
            px = np.float64(points[cur, 0])
            py = np.float64(points[cur, 1])
            pz = np.float64(points[cur, 2])
            best = -1.0
            best_j = 0
            for j in range(n):
                dx = np.float64(points[j, 0]) - px
                dy = np.float64(points[j, 1]) - py
                dz = np.float64(points[j, 2]) - pz
                d = dx * dx + dy * dy + dz * dz
                if d < dist[j]:
                    dist[j] = d
                if dist[j] > best:
                    best = dist[j]
                    best_j = j
            cur = best_j

    @njit(parallel=True, cache=True)
    def ball_query(points, query, radius_sq, out):  # pragma: no cover - compiled
        """PointNet++ ball query. points: (B, N, 3), query: (B, M, 3), out: (B, M, K) int64.

        Scans the points in index order and stops at K inside (d^2 < radius_sq, from coordinate
        differences in float64); the rest is padded with the first found (0 if none).
        """
        nb, m, k = out.shape
        n = points.shape[1]
        for t in prange(nb * m):
            b = t // m
            q = t % m
            qx = np.float64(query[b, q, 0])
            qy = np.float64(query[b, q, 1])
            qz = np.float64(query[b, q, 2])
            found = 0
            for j in range(n):
                dx = np.float64(points[b, j, 0]) - qx
                dy = np.float64(points[b, j, 1]) - qy
                dz = np.float64(points[b, j, 2]) - qz
                if dx * dx + dy * dy + dz * dz < radius_sq:
                    out[b, q, found] = j
                    found += 1
                    if found == k:
                        break
            first = out[b, q, 0] if found > 0 else 0
            for r in range(found, k):
                out[b, q, r] = first

    @njit(parallel=True, cache=True)
    def farthest_point_sample(points, starts, out):  # pragma: no cover - compiled
        """Exact FPS per cloud. points: (B, N, 3); starts: (B,) int64; out: (B, m) int64.

        Squared distances accumulate in float64 so that the choice does not depend on the
        input dtype; ties go to the lowest index.
        """
        for b in prange(points.shape[0]):
            farthest_point_sample_one(points[b], starts[b], out[b])

    @njit(cache=True)
    def splat_zbuffer(u, v, z, radius, zbuf, index):  # pragma: no cover - compiled
        """Z-buffered disc splats. u, v, z, radius: (N,) column, row, depth, pixel radius;
        zbuf: (H, W) initialised to +inf; index: (H, W) int64 initialised to -1. A pixel takes
        the nearest point whose disc covers its centre (ties: the lower index)."""
        height, width = zbuf.shape
        for i in range(u.shape[0]):
            if not z[i] > 0:
                continue
            r = radius[i]
            x0 = max(0, int(np.floor(u[i] - r)))
            x1 = min(width - 1, int(np.floor(u[i] + r)))
            y0 = max(0, int(np.floor(v[i] - r)))
            y1 = min(height - 1, int(np.floor(v[i] + r)))
            for y in range(y0, y1 + 1):
                dy = y + 0.5 - v[i]
                for x in range(x0, x1 + 1):
                    dx = x + 0.5 - u[i]
                    if dx * dx + dy * dy <= r * r and z[i] < zbuf[y, x]:
                        zbuf[y, x] = z[i]
                        index[y, x] = i
