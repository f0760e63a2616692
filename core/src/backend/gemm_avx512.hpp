// flowlab's own single-threaded f32 GEMM for x86 CPUs with AVX-512, behind backend::sgemm_small
// (onednn.hpp), and the kernels of the skinny products linalg.cpp runs itself
// (skinny_avx512.cpp).
//
// Why beside oneDNN's: the fused convolutions (conv_stack) run thousands of small products per
// step (a few hundred rows x 128), where oneDNN's per-call setup (memory objects, a stream
// wait) is a few per cent; this kernel has none and matches or beats oneDNN's matmul on those
// shapes (about 110 GFLOP/s on one core whose FMA peak is about 116). Internal to the core.
#pragma once

#include <cstdint>

namespace flowlab::backend::avx512 {

// Whether this CPU runs the kernel (AVX-512F).
bool available();

// Whether the kernel suits an A with leading dimension lda. Not when A's rows are a multiple
// of 1 KB apart: the 14 rows it reads side by side (or, transposed, the successive k steps)
// then fall into a few L1 sets - 4 KB apart, all into one 8-way set, a miss per broadcast.
// oneDNN packs its operands first; copying A apart here cost W2's 1,024-wide hidden layer more
// than oneDNN's whole product takes.
inline bool suits(std::int64_t lda) { return lda % 256 != 0; }

// C[m, n] = op(A) B (+ bias[n]) (+ beta C) (then ReLU) on the calling thread, row-major,
// op = transpose when ta, with leading dimensions lda, ldb, ldc of the whole matrices; B [k, n]
// is not transposed. With a gate [m, n] (leading dimension ldg): then C = gate > 0 ? C : 0 and
// colsum[j] += C[i, j] for i = 0, 1, ... (a ReLU's backward and its bias gradient). The sum
// over k runs in a fixed order: the same inputs give the same bits on every call.
void gemm_tile(std::int64_t m, std::int64_t n, std::int64_t k, bool ta, const float* a, std::int64_t lda,
               const float* b, std::int64_t ldb, float* c, std::int64_t ldc, const float* bias, float beta, bool relu,
               const float* gate = nullptr, std::int64_t ldg = 0, float* colsum = nullptr);

// Skinny products (a side of at most 4) for linalg.cpp, with the bits of its portable loops on
// a CPU with FMA: every output starts from 0 and takes its products in the same order, each
// as one FMA. B [k, n], Bt [n, k] and C [m, n] are row-major and contiguous.
//
// axpy_rows: C = op(A) B (+ beta C) (+ bias) (then ReLU) (then gate > 0 ? C : 0), with op(A)
// [m, k] stored [m, k], or [k, m] when `ta`; each row's sum term by term: beta C (0: none),
// then + A[i, 0] B[0, :], + A[i, 1] B[1, :], ... `gate` (null: none) is a tensor of C's shape, the
// backward pass's ReLU mask.
void axpy_rows(std::int64_t m, std::int64_t n, std::int64_t k, const float* a, bool ta, const float* b, float* c,
               float beta, const float* bias, bool relu, const float* gate);
// dot_rows (n <= 4): C[i, j] = <A row i, Bt row j> (+ bias[j]) (then ReLU), A [m, k]; each dot
// summed in 16 lanes (lane l: elements l, l + 16, ... in order), then the lanes in order from 0.
void dot_rows(std::int64_t m, std::int64_t n, std::int64_t k, const float* a, const float* bt, float* c,
              const float* bias, bool relu);

// C[m, n] = op(A) B (+ bias) (then ReLU) (then gate > 0 ? C : 0, with C's rows added to colsum in
// order when colsum is given, as gemm_tile's epilogue), skipping op(A)'s zero entries
// (sparse_avx512.cpp): for a ReLU's output or a gradient it gated, about half of them. Each
// output is summed over k in chain blocks of `chain` (a block's products one FMA after the
// other from 0, in order of k; the blocks' sums added left to right): with the chain blocks of
// the dense kernel beside it, its exact bits. Returns false, having written nothing, when more
// than max_density of op(A)'s entries are nonzero (the dense kernel is then faster). op(A) is
// [m, k] at a[i lda + k], or at a[k lda + i] when `ta`; B [k, n] row-major, not transposed.
bool sparse_gemm(std::int64_t m, std::int64_t n, std::int64_t k, bool ta, const float* a, std::int64_t lda,
                 const float* b, std::int64_t ldb, float* c, std::int64_t ldc, std::int64_t chain, double max_density,
                 const float* bias, bool relu, const float* gate, std::int64_t ldg, float* colsum = nullptr);

// sparse_gemm with C written transposed: C^T [n, m] at c, rows ldc apart (no epilogue). A
// weight gradient dW = H^T G whose G is the sparser operand runs as dW^T = G^T H.
bool sparse_gemm_ct(std::int64_t m, std::int64_t n, std::int64_t k, bool ta, const float* a, std::int64_t lda,
                    const float* b, std::int64_t ldb, float* c, std::int64_t ldc, std::int64_t chain,
                    double max_density);

// dst [n, m] = src [m, n] transposed (row-major, contiguous), through 16 x 16 blocks in registers.
void transpose(const float* src, std::int64_t m, std::int64_t n, float* dst);

// dst[0, n) = src[0, n) with non-temporal stores (dst 64-byte aligned): the lines go to memory
// without being read first and without evicting the cache's working set.
void stream_copy(float* dst, const float* src, std::int64_t n);

}  // namespace flowlab::backend::avx512
