"""Random numbers keyed per sequence (dropout masks): the Philox-4x32-10 generator, its
host and device forms side by side, and the streams dropout draws from.

A mask drawn for a whole (B, ...) batch from one stream depends on how the batch is cut:
split it over two processes and each half draws other numbers. So row b of every draw
comes from its own counter-based stream, keyed by (key, draw number, global row index):
the same sequence gets the same mask whichever process holds it, and nothing is set up
per micro-batch but a key (Salmon et al. 2011, "Parallel random numbers: as easy as
1, 2, 3"). The numbers are the same on the host and on the device: a run's dropout masks
do not depend on where it runs.

    philox4x32(counter, key)      the block function in plain array code (Random123's known answers)
    philox_uniform_plain(...)     its uniform numbers for an array, in plain array code: the reference
    PHILOX_CUDA                   the same numbers as a CUDA device function (this kernel's and
                                  cuda_kernels.dropout_forward's)
    philox_uniform(...)           the one name: a CUDA kernel on the device, a compiled loop on the
                                  host (cpu_kernels.philox_uniform32/64, bit for bit), else the plain twin
    rng(key, first_row)           the SequenceStreams of one forward's dropout masks

Shapes: the first axis of every draw is the batch (B, ...); the rest is flattened into a
row of row_size elements, and element j of row b depends only on (key, draw, first_row + b, j).
"""
import numpy

from minibert import backend, host

PHILOX_M = (0xD2511F53, 0xCD9E8D57)  # Philox-4x32 round multipliers
PHILOX_W = (0x9E3779B9, 0xBB67AE85)  # Weyl key increments (golden ratio, sqrt(3) - 1)


def philox4x32(counter, key, rounds=10):
    """Philox-4x32-10 in plain array code: counter (4, n) uint32, key (2,) uint32 -> (4, n)
    uint32. The reference the compiled and device kernels must equal (Random123's known
    answers pass)."""
    c = [numpy.asarray(w, dtype=numpy.uint64) for w in counter]  # 4 x (n,) widened for the products
    k0, k1 = numpy.uint64(key[0]), numpy.uint64(key[1])
    mask = numpy.uint64(0xFFFFFFFF)
    for _ in range(rounds):
        p0 = numpy.uint64(PHILOX_M[0]) * c[0]  # (n,) full 64-bit products
        p1 = numpy.uint64(PHILOX_M[1]) * c[2]
        c = [((p1 >> numpy.uint64(32)) ^ c[1] ^ k0) & mask, p1 & mask,
             ((p0 >> numpy.uint64(32)) ^ c[3] ^ k1) & mask, p0 & mask]
        k0 = (k0 + numpy.uint64(PHILOX_W[0])) & mask
        k1 = (k1 + numpy.uint64(PHILOX_W[1])) & mask
    return numpy.stack(c).astype(numpy.uint32)  # (4, n)


def philox_uniform_plain(shape, dtype, key, draw, first_row):
    """The generator's numbers in plain array code: element j of row b (the first axis) is
    word j % 4 (24 bits, float32) of Philox-4x32-10 at counter (j // 4, first_row + b,
    draw, 0), or words 2 (j % 2), 2 (j % 2) + 1 (53 bits, float64) of counter
    (j // 2, first_row + b, draw, 0); uniform in [0, 1)."""
    rows = shape[0] if shape else 1
    row_size = int(numpy.prod(shape[1:])) if shape else 1
    per = 2 if numpy.dtype(dtype) == numpy.float64 else 4  # numbers per counter value
    calls = -(-row_size // per)
    i = numpy.arange(rows * calls, dtype=numpy.uint64)  # (rows * calls,) one per Philox call
    ctr = [i % calls, first_row + i // calls, numpy.full(i.size, draw, numpy.uint64), numpy.zeros(i.size, numpy.uint64)]
    w = philox4x32(ctr, key).T.reshape(rows, calls * 4)  # (rows, 4 calls) the words in order
    if per == 2:
        w = w.reshape(rows, calls * 2, 2)  # (rows, 2 calls, 2) word pairs
        u = ((w[..., 0] >> 5).astype(numpy.float64) * 67108864.0 + (w[..., 1] >> 6)) / 9007199254740992.0
    else:
        u = (w >> 8).astype(numpy.float32) * numpy.float32(1.0 / 16777216.0)
    return u[:, :row_size].reshape(shape).astype(dtype)  # (...)


# One Philox call gives four 32-bit words: float32 uses each word (24 bits), float64 two
# words per number (53 bits). `words` is how many numbers one counter value serves (4 or 2).
# Element i of an array whose rows (first axis) hold row_size elements; the result is
# double, exactly the float32 value when words is 4. cuda_kernels.dropout_forward calls it too.
PHILOX_CUDA = r"""
__device__ inline double minibert_philox_uniform(long long i, long long row_size, int words, unsigned int key0,
                                                 unsigned int key1, unsigned int draw, long long first_row) {
    const long long j = i % row_size;
    unsigned int c0 = (unsigned int)(j / words), c1 = (unsigned int)(first_row + i / row_size);
    unsigned int c2 = draw, c3 = 0, k0 = key0, k1 = key1;
    for (int r = 0; r < 10; r++) {
        unsigned int hi0 = __umulhi(0xD2511F53u, c0), lo0 = 0xD2511F53u * c0;
        unsigned int hi1 = __umulhi(0xCD9E8D57u, c2), lo1 = 0xCD9E8D57u * c2;
        c0 = hi1 ^ c1 ^ k0; c1 = lo1; c2 = hi0 ^ c3 ^ k1; c3 = lo0;
        k0 += 0x9E3779B9u; k1 += 0xBB67AE85u;
    }
    const unsigned int w[4] = {c0, c1, c2, c3};
    if (words == 2) {
        const int s = 2 * (int)(j % 2);
        return ((double)(w[s] >> 5) * 67108864.0 + (double)(w[s + 1] >> 6)) * (1.0 / 9007199254740992.0);
    }
    return (double)((float)(w[j % 4] >> 8) * (1.0f / 16777216.0f));
}
"""
_philox_kernels = {}  # dtype -> compiled ElementwiseKernel


def _philox_uniform_device(shape, dtype, key, draw, first_row):
    """philox_uniform_plain's numbers as one CUDA kernel over the output."""
    xp = backend.xp
    dt = numpy.dtype(dtype)
    kern = _philox_kernels.get(dt)
    if kern is None:
        # parameter types are NumPy's names: "float" there would mean float64
        words = 2 if dt == numpy.float64 else 4
        kern = xp.ElementwiseKernel(
            "uint32 key0, uint32 key1, uint32 draw, int64 first_row, int64 row_size", f"{dt.name} out",
            f"out = minibert_philox_uniform(i, row_size, {words}, key0, key1, draw, first_row);",
            f"minibert_philox_{dt.name}", preamble=PHILOX_CUDA)
        _philox_kernels[dt] = kern
    out = xp.empty(shape, dtype=dt)  # (B, ...)
    row_size = int(numpy.prod(shape[1:])) if shape else 1
    kern(numpy.uint32(key[0]), numpy.uint32(key[1]), numpy.uint32(draw), numpy.int64(first_row),
         numpy.int64(row_size), out)
    return out


def philox_uniform(shape, dtype, key, draw, first_row):
    """philox_uniform_plain's numbers, bit for bit, as an array of the current backend: one
    CUDA kernel on the device, a compiled loop on the host (float32 and float64), else the
    plain twin itself."""
    if backend.xp is not numpy:
        return _philox_uniform_device(shape, dtype, key, draw, first_row)  # (B, ...)
    cpu, dt = host.compiled_loops(), numpy.dtype(dtype)
    if cpu is None or dt not in (numpy.float32, numpy.float64):
        return philox_uniform_plain(shape, dtype, key, draw, first_row)  # (...)
    out = numpy.empty(shape, dt)  # (rows, ...)
    rows = shape[0] if shape else 1
    fill = cpu.philox_uniform32 if dt == numpy.float32 else cpu.philox_uniform64
    o2 = out.reshape(rows, -1)  # (rows, n) view
    host.split_run(lambda lo, hi: fill(o2, int(key[0]), int(key[1]), int(draw), int(first_row), lo, hi), rows,
                   out.size)
    return out


class SequenceStreams:
    """Uniform numbers whose row b (the first axis is the batch) depends only on the key,
    the draw number and the global row index first_row + b: how a batch is split over
    processes changes none of them. `.random(shape, dtype)` is what dropout calls, once
    per dropout site, in forward order."""

    def __init__(self, key, first_row=0):
        words = numpy.random.SeedSequence(list(key) if isinstance(key, (tuple, list)) else key)
        self.key32 = words.generate_state(2, numpy.uint32)  # the Philox-4x32 key
        self.first_row = int(first_row)
        self.draws = 0  # .random calls so far: the draw number is part of every counter

    def next_draw(self):
        """The draw number of the next dropout site, counted: what .random uses, and what a
        fused kernel that draws its own numbers (kernels.dropout) takes instead."""
        self.draws += 1
        return self.draws - 1

    def random(self, shape, dtype=numpy.float64):
        """Uniform numbers in [0, 1) of this shape and dtype, the stream's next draw."""
        shape = (shape,) if isinstance(shape, (int, numpy.integer)) else tuple(shape)
        draw = self.next_draw()
        return philox_uniform(shape, dtype, self.key32, draw, self.first_row)  # (B, ...)

    def fork(self, draw=None):
        """A new stream of the same key and rows whose next draw is `draw` (None: this
        stream's next), this one untouched: it redraws exactly the numbers this stream gave
        from that draw on (encoder.encoder_backward reruns a layer's forward with one)."""
        twin = SequenceStreams.__new__(SequenceStreams)
        twin.key32, twin.first_row = self.key32, self.first_row  # key32 is never written into
        twin.draws = self.draws if draw is None else int(draw)
        return twin


def rng(key, first_row=0):
    """The random stream of one forward's dropout masks, keyed by an int or a tuple of ints
    such as (seed, step, micro_batch); first_row is the global index of this process's
    first sequence. See SequenceStreams: a resumed run, or a run split over N processes,
    redraws exactly the masks of an uninterrupted single-process run."""
    return SequenceStreams(key, first_row)
