"""imitate: imitation learning in one file of numpy and numba.

Read it beside the lecture notes; copy a head or a loop into your own project; run the experiments:

    python bench.py          # the lecture's results, with confidence intervals, in a few minutes
    python imitate.py        # a short tour of the policy heads on bimodal demonstrations
    pytest -q                # the tests: gradients, samplers, kernels, algorithms

Papers implemented:
1. Behavior cloning and its compounding error: Ross & Bagnell, Efficient Reductions for Imitation
   Learning, AISTATS 2010.
2. DAgger: Ross, Gordon & Bagnell, A Reduction of Imitation Learning and Structured Prediction to
   No-Regret Online Learning, AISTATS 2011.
3. HG-DAgger: Kelly, Sidrane, Driggs-Campbell & Kochenderfer, HG-DAgger: Interactive Imitation Learning
   with Human Experts, ICRA 2019.
4. DART: Laskey, Lee, Fox, Dragan & Goldberg, DART: Noise Injection for Robust Imitation Learning,
   CoRL 2017.
5. Mixture density networks: Bishop, Mixture Density Networks, 1994.
6. DDPM: Ho, Jain & Abbeel 2020; DDIM: Song, Meng & Ermon 2021; cosine schedule: Nichol & Dhariwal 2021;
   as used for actions by Diffusion Policy, Chi et al. 2023. Shifted schedules: Hoogeboom, Heek &
   Salimans 2023.
7. Discretized autoregressive actions: Metz et al., Discrete Sequential Prediction of Continuous
   Actions for Deep RL, 2017 (and the binned actions of RT-1, Brohan et al. 2022).
8. Hindsight goal relabeling: GCSL, Ghosh et al. 2021; RvS, Emmons et al. 2022.
9. Conditional VAEs: Kingma & Welling 2014; Sohn, Lee & Yan 2015 (ACT, Zhao et al. 2023, uses one).
10. Causal confusion: de Haan, Jayaraman & Levine, Causal Confusion in Imitation Learning, NeurIPS 2019.
11. Side cameras: Bojarski et al., End to End Learning for Self-Driving Cars (DAVE-2), 2016. Query by
    committee for active imitation: ThriftyDAgger, Hoque et al., CoRL 2021.
12. BCO: Torabi, Warnell & Stone, Behavioral Cloning from Observation, IJCAI 2018.
13. One-shot imitation: Duan et al., One-Shot Imitation Learning, NeurIPS 2017.
14. PPO: Schulman et al. 2017, with GAE: Schulman et al. 2016. GAIL: Ho & Ermon, Generative Adversarial
    Imitation Learning, NeurIPS 2016.
15. Time-contrastive networks: Sermanet et al., Time-Contrastive Networks: Self-Supervised Learning from
    Video, ICRA 2018.
16. GRU: Cho et al., Learning Phrase Representations using RNN Encoder-Decoder for Statistical Machine
    Translation, EMNLP 2014 (robomimic's BC-RNN, Mandlekar et al. 2021, clones with a recurrent body).
17. Action chunks: ACT, Zhao, Kumar, Levine & Finn, Learning Fine-Grained Bimanual Manipulation with Low-Cost
    Hardware, RSS 2023 (temporal ensembling); Diffusion Policy's receding horizon, Chi et al. 2023.
18. A learned sigma(s) starves the mean: Seitzer et al., On the Pitfalls of Heteroscedastic Uncertainty
    Estimation with Probabilistic Neural Networks, ICLR 2022.

Lecture idea -> where it lives:
    L2 regression learns the conditional mean .......... L2Head.nll
    expressive heads fit multimodal demonstrations ..... MixtureHead, CategoricalHead, AutoregressiveHead,
                                                         DiffusionHead, CVAEHead
    BC's cost grows like eps T^2 ....................... bc, road_exact_cost
    DAgger's cost grows like eps T ..................... dagger
    human-gated corrections need fewer labels .......... hg_dagger
    uncertainty-gated queries need fewer labels ........ active_dagger, Ensemble
    data with mistakes and recoveries helps ............ dart, Road.side_cameras, augment
    history helps a non-Markovian expert ............... History, Tree(cue=True)
    ... and can hurt through causal confusion .......... History, Road(persist=...)
    memory beyond any window ........................... Recurrent, gru_forward, Tree(cue=True, corridor=...)
    any trajectory demonstrates reaching where it went . relabel, hindsight_bc
    demonstrations without actions still teach ......... bco, Trajectories.states_only
    one demonstration of a new task can teach .......... one_shot, encode_forward
    ... even filmed from another viewpoint ............. Camera, tcn, triplet_forward, video_goal
    RL can beat the expert BC imitates ................. ppo, Goals(cost="task", speed=0.5)
    BC as a reward term ................................ shaped_reward
    a reward learned from demonstrations ............... gail, gail_reward
    expressive heads hold up on real control ........... Pendulum, GaussianHead(shared_std=True)
    chunks commit to a mode; an open loop cannot react . Trajectories.chunks, ChunkedActor
"""

import inspect
import math
import numbers
import os
import statistics
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import NamedTuple

import numpy as np
from numba import njit

# ---- networks ----
# Dimensions: B batch, I / J a layer's input / output width, O observation, A action, H hidden,
# K mixture components, C classes (or bins), E embedding, N diffusion steps, S sampling steps,
# T horizon, n environments, P demonstration pairs and M steps drawn from each (one-shot imitation).


def linear_forward(x, W, b, out):
    np.matmul(x, W, out=out)  # z = x W + b (B, J), written into out; the cache is x itself
    out += b
    return out


def linear_backward(dout, x, W, dW, db, dx=None):
    """Writes dL/dW and dL/db (each layer runs once per step, so nothing is accumulated) and dL/dx if asked."""
    np.matmul(x.T, dout, out=dW)  # dL/dW = x^T dout (I, J)
    np.matmul(np.ones(len(dout), dout.dtype), dout, out=db)  # dL/db = 1^T dout (J,): a BLAS call, twice as fast as sum
    return None if dx is None else np.matmul(dout, W.T, out=dx)  # dL/dx = dout W^T (B, I)


# Activations: forward(z, out) -> h = f(z); backward(dh, z, h) turns dh = dL/dh into dL/dz = dL/dh f'(z) in
# place. Backward runs after the next layer has used h, so it may overwrite z and h: no temporaries.


def relu_forward(z, out):
    return np.maximum(z, 0, out=out)  # h = max(z, 0)


def relu_backward(dh, z, h):
    dh *= np.greater(z, 0, out=z)  # f'(z) = 1[z > 0]


def tanh_forward(z, out):
    return np.tanh(z, out=out)


def tanh_backward(dh, z, h):
    dh *= np.subtract(1, np.square(h, out=h), out=h)  # f'(z) = 1 - tanh(z)^2 = 1 - h^2


def sigmoid(z, out):
    s = np.tanh(np.multiply(z, 0.5, out=out), out=out)  # sigmoid(z) = (1 + tanh(z / 2)) / 2: no overflow
    s *= 0.5
    s += 0.5
    return s


def silu_forward(z, out):
    return np.multiply(z, sigmoid(z, out), out=out)  # h = z sigmoid(z)


def silu_backward(dh, z, h):
    np.subtract(z, h, out=h)  # z - h = z (1 - s), with s = sigmoid(z) and h = z s
    h += 1
    dh *= h
    dh *= sigmoid(z, z)  # f'(z) = s (1 + z (1 - s))


ACTIVATIONS = {
    "relu": (relu_forward, relu_backward),
    "tanh": (tanh_forward, tanh_backward),
    "silu": (silu_forward, silu_backward),
}


@dataclass(frozen=True)
class MLP:
    """A multilayer perceptron: Linear, activation, ..., Linear. Parameters live elsewhere, in one flat vector."""

    sizes: tuple  # (I, H, ..., J): input width, hidden widths, output width
    activation: str = "relu"  # relu, tanh or silu between layers; none after the last

    def __post_init__(self):
        if len(self.sizes) < 2 or any(not isinstance(s, (int, np.integer)) or s < 1 for s in self.sizes):
            raise ValueError(f"sizes must be at least two positive integers, got {self.sizes}")
        if not isinstance(self.activation, str) or self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}")

    @cached_property
    def shapes(self):
        return {
            name: shape
            for i, (I, J) in enumerate(zip(self.sizes[:-1], self.sizes[1:]))
            for name, shape in ((f"W{i}", (I, J)), (f"b{i}", (J,)))
        }

    @cached_property
    def n_params(self):
        return sum(math.prod(s) for s in self.shapes.values())

    def views(self, flat):
        """Named views into the flat vector: {"W0": (I, H), "b0": (H,), ...}; writing to them writes to flat."""
        out, i = {}, 0
        for name, shape in self.shapes.items():
            n = math.prod(shape)
            out[name] = flat[i : i + n].reshape(shape)
            i += n
        return out

    def init(self, rng):
        """He-normal weights for ReLU, LeCun-normal otherwise; zero biases. float32."""
        flat = np.zeros(self.n_params, np.float32)
        gain = 2.0 if self.activation == "relu" else 1.0
        for name, view in self.views(flat).items():
            if name[0] == "W":
                view[:] = rng.standard_normal(view.shape) * math.sqrt(gain / view.shape[0])
        return flat


class Buffers(NamedTuple):
    """One network's activations and gradients at one batch size. A training step writes into the same
    buffers every time (llm.c keeps one activation buffer the same way), so it allocates no large arrays."""

    z: list  # z[i] (B, J_i): layer i's pre-activation; z[-1] is the network's output
    h: list  # h[i] (B, J_i): layer i's activation, the next layer's input
    dh: list  # dh[i] (B, I_i): dL/d(layer i's input); dh[0] is dL/dx

    @classmethod
    def of(cls, net, rows, dtype=np.float32):
        def new(widths):
            return [np.empty((rows, w), dtype) for w in widths]

        return cls(new(net.sizes[1:]), new(net.sizes[1:-1]), new(net.sizes[:-1]))


def buffers(workspace, name, net, x, params):
    """Network `name`'s buffers for input x, kept in the workspace dict (a Policy owns one): one set per network
    and dtype, made on first use, remade only for a larger batch; a smaller one gets views of its first rows.
    None without a workspace, and mlp_forward makes fresh ones. What they hold is overwritten by the next call."""
    if workspace is None:
        return None
    key, rows = (name, net, np.result_type(x, params)), len(x)
    if key not in workspace or len(workspace[key].z[0]) < rows:
        workspace[key] = Buffers.of(net, rows, key[2])
    buf = workspace[key]
    return buf if len(buf.z[0]) == rows else Buffers(*[[a[:rows] for a in group] for group in buf])


def mlp_forward(net, params, x, buf=None):
    """x (B, I) -> out (B, J), written into buf (fresh buffers if None); the cache for mlp_backward is (x, buf).
    The output lives in buf: a second forward through the same buffers overwrites it."""
    act = ACTIVATIONS[net.activation][0]
    p = net.views(params)
    buf = buf or Buffers.of(net, len(x), np.result_type(x, params))
    h, last = x, len(net.sizes) - 2
    for i in range(len(net.sizes) - 1):
        z = linear_forward(h, p[f"W{i}"], p[f"b{i}"], buf.z[i])  # z = h W + b (B, J)
        h = z if i == last else act(z, buf.h[i])  # h = f(z); no activation after the last layer
    return h, (x, buf)


def mlp_backward(net, params, dout, cache, dparams, input_grad=True):
    """Writes the parameter gradients into dparams (same layout as params); returns dx (B, I), or None with
    input_grad=False (training needs no gradient for the data: one matmul saved). Overwrites the cache."""
    act_backward = ACTIVATIONS[net.activation][1]
    p, d = net.views(params), net.views(dparams)
    x, buf = cache
    last = len(net.sizes) - 2
    for i in reversed(range(len(net.sizes) - 1)):
        if i != last:
            act_backward(dout, buf.z[i], buf.h[i])  # dL/dz = dL/dh f'(z), in place
        dx = buf.dh[i] if input_grad or i > 0 else None
        dout = linear_backward(dout, buf.h[i - 1] if i > 0 else x, p[f"W{i}"], d[f"W{i}"], d[f"b{i}"], dx)
    return dout


@dataclass(frozen=True)
class GRU:
    """A gated recurrent unit (Cho et al. 2014) run over sequences: a memory beyond any window. Its parameters live
    elsewhere, in one flat vector with named views, laid out as an MLP's are."""

    sizes: tuple  # (I, H): input width, hidden (memory) width

    @cached_property
    def shapes(self):
        I, H = self.sizes
        return {f"{m}_{g}": s for g in "zrh" for m, s in (("W", (I, H)), ("U", (H, H)), ("b", (H,)))}

    n_params, views = MLP.n_params, MLP.views  # the flat layout of an MLP, over these shapes

    def init(self, rng):
        """LeCun-normal weights (W: 1 / I, U: 1 / H), zero biases. float32."""
        flat = np.zeros(self.n_params, np.float32)
        for name, view in self.views(flat).items():
            if name[0] != "b":
                view[:] = rng.standard_normal(view.shape) / math.sqrt(view.shape[0])
        return flat


def gru_forward(gru, params, x, start, h=None):
    """x (B, T, I) -> hs (B, T, H), the state after each step, and the cache for gru_backward. h (B, H) is the state
    before the first step (None: zeros); where start (B, T) holds, an episode begins there and h is set to 0 first."""
    p, (B, T, _), H = gru.views(params), x.shape, gru.sizes[1]
    xz, xr, xh = (x @ p[f"W_{g}"] + p[f"b_{g}"] for g in "zrh")  # every step's input terms at once (B, T, H)
    h = np.zeros((B, H), x.dtype) if h is None else h
    hs, h_prev, z, r, c = (np.empty((B, T, H), x.dtype) for _ in range(5))
    for t in range(T):
        h = h_prev[:, t] = np.where(start[:, t, None], 0, h)  # a new episode forgets: h = 0
        z_t = sigmoid(xz[:, t] + h @ p["U_z"], z[:, t])  # z = sigma(x W_z + h U_z + b_z), the update gate
        r_t = sigmoid(xr[:, t] + h @ p["U_r"], r[:, t])  # r = sigma(x W_r + h U_r + b_r), the reset gate
        c_t = np.tanh(xh[:, t] + (r_t * h) @ p["U_h"], out=c[:, t])  # h~ = tanh(x W_h + (r * h) U_h + b_h)
        h = hs[:, t] = (1 - z_t) * h + z_t * c_t  # h' = (1 - z) * h + z * h~
    return hs, (x, start, h_prev, z, r, c)


def gru_backward(gru, params, dhs, cache, dparams):
    """Backpropagation through time: dhs (B, T, H) = dL/dh_t from outside (the head) -> the parameter gradients,
    summed over steps, written into dparams. Returns dL/dh (B, H) for the state before the first step. Nothing
    flows back across a step where start holds: there h was set to 0, not computed from the earlier h."""
    p, d = gru.views(params), gru.views(dparams)
    x, start, h_prev, z, r, c = cache
    B, T, H = z.shape
    dz, dr, dc = (np.empty_like(z) for _ in range(3))  # dL/d(each gate's pre-activation) (B, T, H)
    dh = np.zeros((B, H), dhs.dtype)  # dL/dh_t through the later steps
    for t in reversed(range(T)):
        dh = dh + dhs[:, t]
        h, z_t, r_t, c_t = h_prev[:, t], z[:, t], r[:, t], c[:, t]
        dc[:, t] = dh * z_t * (1 - c_t * c_t)  # through h' = ... + z h~ and h~ = tanh(.)
        dz[:, t] = dh * (c_t - h) * z_t * (1 - z_t)  # through h' = h + z (h~ - h) and z = sigma(.)
        drh = dc[:, t] @ p["U_h"].T  # dL/d(r * h)
        dr[:, t] = drh * h * r_t * (1 - r_t)  # r = sigma(.)
        # term 1: h' = (1 - z) h + ...; term 2: through r * h; terms 3, 4: through the gates z and r
        dh = dh * (1 - z_t) + drh * r_t + dz[:, t] @ p["U_z"].T + dr[:, t] @ p["U_r"].T
        dh[start[:, t]] = 0  # stop the gradient where an episode begins
    x, h_prev = x.reshape(B * T, -1), h_prev.reshape(B * T, H)  # sum over steps as one matmul
    for g, dpre, h_in in (("z", dz, h_prev), ("r", dr, h_prev), ("h", dc, r.reshape(B * T, H) * h_prev)):
        dpre = dpre.reshape(B * T, H)
        np.matmul(x.T, dpre, out=d[f"W_{g}"])  # dL/dW = sum_t x_t^T dpre_t
        np.matmul(h_in.T, dpre, out=d[f"U_{g}"])  # dL/dU = sum_t h_t^T dpre_t (for h~: (r * h)^T)
        np.sum(dpre, 0, out=d[f"b_{g}"])
    return dh


@njit(cache=True, error_model="numpy")  # numpy's error model: no per-element division checks, so it vectorizes
def adam_update(params, grad, m, v, t, lr, beta1, beta2, eps, scale):
    """One Adam step over the flat vector, in place, on the gradient times `scale` (clipping)."""
    f32 = np.float32  # float32 throughout, as numpy scalars in Python: the same numbers compiled or not
    step, inv_c2 = f32(lr / (1 - beta1**t)), f32(1 / (1 - beta2**t))  # the bias corrections 1 - b^t folded in
    b1, b2, eps, scale = f32(beta1), f32(beta2), f32(eps), f32(scale)
    for i in range(params.size):
        g = grad[i] * scale
        m[i] = b1 * m[i] + (f32(1) - b1) * g  # m = b1 m + (1 - b1) g
        v[i] = b2 * v[i] + (f32(1) - b2) * g * g  # v = b2 v + (1 - b2) g^2
        params[i] -= step * m[i] / (np.sqrt(v[i] * inv_c2) + eps)  # lr m^ / (sqrt(v^) + eps)


class Adam:
    """Adam (Kingma & Ba 2015) whose moments share the parameters' flat layout."""

    def __init__(self, n, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, max_norm=0.0):
        self.lr = _real("lr", lr, 0, 1, open_low=True)  # an update moves a parameter by at most about 30 lr
        if len(betas) != 2:
            raise ValueError(f"betas must be two numbers in [0, 1), got {betas}")
        self.betas = tuple(_real("betas", b, 0, 1, open_high=True) for b in betas)
        self.eps, self.max_norm = _real("eps", eps, 0, 1, open_low=True), _real("max_norm", max_norm, 0)
        self.m, self.v, self.t = np.zeros(n, np.float32), np.zeros(n, np.float32), 0

    def step(self, params, grad, loss=0.0, where="Adam"):
        """One step on the gradient, first clipped to global norm max_norm (if > 0); returns the norm. A loss or a
        gradient that is not finite, or a gradient whose square overflows the float32 second moment (norm >= 1e19),
        is a ValueError naming `where`, and nothing changes: the parameters stay as before this step."""
        for name, x in (("params", params), ("grad", grad)):
            if x.dtype != np.float32 or x.shape != self.m.shape or not x.flags.c_contiguous:
                raise ValueError(f"{name} must be a contiguous float32 vector of length {self.m.size}")
        norm = math.sqrt(float(np.dot(grad, grad)))  # NaN or inf if any element is
        if not (math.isfinite(loss) and norm < 1e19):
            raise ValueError(
                f"{where} has loss {loss:.3g} and gradient norm {norm:.3g}; training stopped there, with the "
                "parameters as before that step. Likely unscaled observations or actions (standardise them) or an lr "
                "too large"
            )
        self.t += 1
        scale = self.max_norm / norm if 0 < self.max_norm < norm else 1.0
        adam_update(params, grad, self.m, self.v, float(self.t), self.lr, *self.betas, self.eps, scale)
        return norm


# ---- policy heads ----
# A head turns network outputs into an action distribution. Output heads (L2, Gaussian, mixture,
# categorical) give nll(out, a) -> (l, dl): the per-example losses l (B,) and dl = dl_i/dout_i (B, n_out),
# and log_prob(out, a), sample(out, rng) and mode(out); the Head base class runs the network around them.
# The autoregressive, diffusion and CVAE heads call networks several times per action, so they override
# the four policy_* methods instead. Every head trains on L = 1/B sum_i w_i l_i: w = 1 is behavior cloning,
# w = advantages is the policy gradient (weigh, below).

LOG_2PI = math.log(2 * math.pi)


def logsumexp(x, axis=-1):
    m = x.max(axis, keepdims=True)
    return (m + np.log(np.exp(x - m).sum(axis, keepdims=True))).squeeze(axis)  # log sum_k e^x_k


def log_softmax(x):
    z = x - x.max(-1, keepdims=True)  # shift first: adding the max back would round away small terms
    return z - np.log(np.exp(z).sum(-1, keepdims=True))  # log p_k = x_k - log sum_j e^x_j


def sample_categorical(p, rng):
    """p (B, C) rows summing to 1 -> (B,) indices, by inverting the CDF with one uniform per row."""
    cdf = p.cumsum(1)
    u = rng.random((len(p), 1), dtype=np.float32) * cdf[:, -1:]  # scaled by the total, which rounding may move off 1
    return np.minimum((cdf <= u).sum(1), p.shape[1] - 1)


def bounded_log_std(raw, lo, hi):
    """Squash raw outputs into [lo, hi] with tanh, so that loss and gradient stay finite for any raw value.
    With the default symmetric bounds a fresh network starts near sigma = 1, where every mixture component
    still sees every mode; starting narrow lets one wide component take all and starve the others."""
    t = np.tanh(raw)
    return lo + 0.5 * (hi - lo) * (t + 1), 0.5 * (hi - lo) * (1 - t * t)  # log_std, dlog_std / draw


def check_array(name, x, shape=None, dtype=None):
    """Raise a ValueError naming x unless it is a finite array of the given shape (None matches any size)."""
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(x).__name__}")
    if x.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold real numbers, got dtype {x.dtype}")
    if shape is not None and (x.ndim != len(shape) or any(s is not None and s != d for s, d in zip(shape, x.shape))):
        want = ", ".join("*" if s is None else str(s) for s in shape) + ("," if len(shape) == 1 else "")
        raise ValueError(f"{name} must have shape ({want}), got {x.shape}")
    if dtype is not None and x.dtype != dtype:
        raise ValueError(f"{name} must have dtype {np.dtype(dtype).name}, got {x.dtype}")
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        raise ValueError(f"{name} must be finite, found NaN or inf")
    return x


def as_float32(name, x, shape=None):
    """x (any array-like of real numbers) as a checked float32 array: integers must be exact in float32 (|x| <=
    2^24) and floats within its range. An (n,) array where (n, *) is asked for is read as (n, 1): one column."""
    x = np.asarray(x)
    check_array(name, x)
    if shape is not None and len(shape) == 2 and x.ndim == 1:
        x = x[:, None]
    if x.dtype.kind in "iu" and x.size and (x.max() > 2**24 or x.min() < -(2**24)):
        raise ValueError(f"{name} holds integers beyond 2^24, which float32 cannot hold exactly")
    if x.dtype.kind == "f" and x.size and np.abs(x).max() > np.finfo(np.float32).max:
        raise ValueError(f"{name} holds numbers beyond float32's range")
    return check_array(name, x.astype(np.float32, copy=False), shape)


def _positive_int(name, value, minimum=1):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _real(name, value, low=-math.inf, high=math.inf, open_low=False, open_high=False):
    """A real number (numpy scalars too) in [low, high], or a ValueError naming it; bounds are open if asked."""
    ok = not isinstance(value, bool) and isinstance(value, numbers.Real) and math.isfinite(value)
    ok = ok and (low < value if open_low else low <= value) and (value < high if open_high else value <= high)
    if not ok:
        where = f"in {'(' if open_low else '['}{low:g}, {high:g}{')' if open_high else ']'}"
        where = f"{'>' if open_low else '>='} {low:g}" if high == math.inf else where
        raise ValueError(f"{name} must be a finite number {where}, got {value!r}")
    return float(value)


def _columns(name, index, width):
    """A slice or a 1-D integer array that selects at least one of `width` columns, or a clear error."""
    if not isinstance(index, slice):
        index = np.asarray(index)
        if index.ndim != 1 or index.dtype.kind not in "iu" or not np.all((-width <= index) & (index < width)):
            raise TypeError(f"{name} must be a slice or a list of column indices below {width}, got {index!r}")
    if len(np.arange(width)[index]) == 0:
        raise ValueError(f"{name} selects none of the {width} columns")
    return index


def _callable(name, f, optional=False):
    if not (callable(f) or (optional and f is None)):
        raise TypeError(f"{name} must be a function of the observations, got {type(f).__name__}")
    return f


def _config(name, cfg, kind):
    if not isinstance(cfg, kind):
        kinds = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise TypeError(f"{name} must be a {kinds}, got {type(cfg).__name__}")
    return cfg


def _log_std_bounds(lo, hi):
    if not (-20 <= lo < hi <= 20):  # exp(+-20) keeps float32 losses finite
        raise ValueError(f"need -20 <= log_std_min < log_std_max <= 20, got {lo}, {hi}")
    return float(lo), float(hi)


def _action_bounds(low, high):
    low, high = (np.atleast_1d(as_float32(name, x)) for name, x in (("low", low), ("high", high)))  # real, finite
    if low.shape != high.shape or low.ndim != 1:
        raise ValueError(f"low and high must be finite 1-D arrays of one shape, got {low}, {high}")
    if np.any(low >= high):
        raise ValueError(f"bounds need low < high in every dimension, got low={low}, high={high}")
    return low, high


def example_weights(w, l):
    """w_i / B for L = 1/B sum_i w_i l_i, given per-example losses l (B,). w: None (all ones: BC's mean), an
    array (B,), or a function of l that returns one (PPO's clipped ratio needs the current losses)."""
    if w is None:
        return np.ones_like(l) / len(l)
    return check_array("weights", np.asarray(w(l) if callable(w) else w, l.dtype), (len(l),)) / len(l)


def weigh(l, dl, w=None):
    """L = 1/B sum_i w_i l_i and dL/d(outputs): the rows of dl = dl_i/d(outputs_i) (B, ...) times w_i / B."""
    if w is None:  # BC: the mean
        return float(l.mean()), dl / len(l)
    scale = example_weights(w, l)
    return float(scale @ l), dl * scale.reshape(-1, *[1] * (dl.ndim - 1))


class Head:
    """Base class: how many network outputs a head needs and how the policy runs the network around it.
    An output head's last `free` outputs may be parameters instead, the same at every state (a state-independent
    log-std): they sit after the network's in the flat vector, and the network gives the other n_out."""

    free = 0

    def __new__(cls, *args, **kwargs):  # remember the constructor's arguments: Policy.save writes them
        head = super().__new__(cls)
        head.args = inspect.signature(cls).bind_partial(*args, **kwargs).arguments
        return head

    def net_in(self, obs_dim):
        return obs_dim

    def init_extra(self, net, rng):
        return np.zeros(self.free, np.float32)  # parameters beyond the network's, at the end of the flat vector

    def outputs(self, net, params, obs, buf=None):
        """The head's outputs (B, n_out + free): the network's, then the free parameters repeated for every row."""
        out, cache = mlp_forward(net, params, obs, buf)
        if self.free:
            free = params[net.n_params : net.n_params + self.free]  # (a Recurrent's GRU follows them)
            out = np.concatenate([out, np.broadcast_to(free, (len(out), self.free))], 1)
        return out, cache

    def free_backward(self, net, dout, grad):
        """dL/d(outputs) (B, n_out + free) -> the network's part (B, n_out); the free parameters' gradient, summed
        over the rows they were repeated in, is written into grad after the network's."""
        if not self.free:
            return dout
        grad[net.n_params : net.n_params + self.free] = dout[:, net.sizes[-1] :].sum(0)
        return np.ascontiguousarray(dout[:, : net.sizes[-1]])

    def init_net(self, net, params):
        """Adjust a fresh network's parameters (net's flat vector) in place; by default they stay as drawn."""

    def policy_loss(self, net, params, obs, a, rng, grad, w=None, workspace=None, obs_grad=False):
        """L = 1/B sum_i w_i l_i(params) (w = None: BC's mean loss). Writes dL/dparams into grad (params' layout)
        and returns L and, with obs_grad, dL/dobs (B, O) (else None). workspace: the policy's buffers."""
        out, cache = self.outputs(net, params, obs, buffers(workspace, "net", net, obs, params))
        loss, dout = weigh(*self.nll(out, a), w)
        return loss, mlp_backward(net, params, self.free_backward(net, dout, grad), cache, grad, obs_grad)

    def policy_log_prob(self, net, params, obs, a):
        return self.log_prob(self.outputs(net, params, obs)[0], a)

    def policy_sample(self, net, params, obs, rng):
        return self.sample(self.outputs(net, params, obs)[0], rng)

    def policy_mode(self, net, params, obs):
        return self.mode(self.outputs(net, params, obs)[0])

    def policy_mean(self, net, params, obs, samples=32):
        """E[a | s]: exact for an output head with a mean(out); else the average of `samples` draws from a
        generator seeded with 0, the same draws for every policy (common random numbers)."""
        if hasattr(self, "mean"):
            return self.mean(self.outputs(net, params, obs)[0])
        rng = np.random.default_rng(0)
        return np.mean([self.policy_sample(net, params, obs, rng) for _ in range(samples)], 0)


class L2Head(Head):
    """The lecture's "version 0": a deterministic policy trained by squared error.

    L = 1/B sum_i 1/2 ||a_i - mu_i||^2 equals the Gaussian NLL -log N(a; mu, I) up to the constant
    (A/2) log 2 pi, so L2 regression is maximum likelihood with a fixed unit variance, and its
    minimiser is the conditional mean E[a | s]: between the modes when demonstrations disagree.
    """

    def __init__(self, action_dim):
        self.action_dim = self.n_out = _positive_int("action_dim", action_dim)

    def nll(self, out, a):
        diff = out - a  # (B, A)
        return 0.5 * (diff * diff).sum(1), diff  # l = 1/2 ||mu - a||^2, dl/dmu = mu - a

    def log_prob(self, out, a):
        return -0.5 * ((out - a) ** 2).sum(1) - 0.5 * self.action_dim * LOG_2PI  # log N(a; mu, I)

    def sample(self, out, rng):
        return out.copy()

    def mode(self, out):
        return out.copy()

    def mean(self, out):
        return out.copy()


class GaussianHead(Head):
    """Diagonal Gaussian N(mu(s), diag sigma(s)^2) with log sigma squashed into [log_std_min, log_std_max].

    What a learned sigma(s) does to the mean: the NLL's gradient in mu is (mu - a) / sigma(s)^2, so where the
    network makes sigma(s) large (hard or rare states) the mean stops learning, and the states it fits closely
    pull hardest on the shared layers (Seitzer et al. 2022). With shared_std=True, log sigma is one parameter per
    action dimension (as Stable-Baselines3 and imitation have it): every example then weighs the same and the
    mean learns as L2's does."""

    def __init__(self, action_dim, log_std_min=-4.0, log_std_max=4.0, shared_std=False):
        self.action_dim = _positive_int("action_dim", action_dim)
        self.free = self.action_dim if shared_std else 0  # log sigma: parameters, not network outputs
        self.n_out = 2 * self.action_dim - self.free
        self.bounds = _log_std_bounds(log_std_min, log_std_max)

    def terms(self, out, a):
        A = self.action_dim
        mu = out[:, :A]  # (B, A)
        log_std, dlog_std_draw = bounded_log_std(out[:, A:], *self.bounds)  # (B, A)
        inv_std = np.exp(-log_std)
        z = (a - mu) * inv_std  # (B, A)
        log_p = -(0.5 * z * z + log_std).sum(1) - 0.5 * A * LOG_2PI  # (B,) log N(a; mu, sigma)
        return log_p, z, inv_std, dlog_std_draw

    def log_prob(self, out, a):
        return self.terms(out, a)[0]

    def nll(self, out, a):
        log_p, z, inv_std, dlog_std_draw = self.terms(out, a)
        dmu = -z * inv_std  # dl/dmu = -(a - mu) / sigma^2
        dlog_std = 1 - z * z  # dl/dlog_std = 1 - z^2
        return -log_p, np.concatenate([dmu, dlog_std * dlog_std_draw], 1)

    def sample(self, out, rng):
        A = self.action_dim
        std = np.exp(bounded_log_std(out[:, A:], *self.bounds)[0])
        return out[:, :A] + std * rng.standard_normal(std.shape, dtype=np.float32)

    def mode(self, out):
        return out[:, : self.action_dim].copy()

    def mean(self, out):
        return self.mode(out)


class MixtureHead(Head):
    """Mixture of K diagonal Gaussians (a mixture density network): outputs logits (K), mu (K A), raw log_std (K A).

    means (K, A), optional: where the components start. The network's output layer then starts at zero, so at
    every state the components start with equal weights, log sigma in the middle of its bounds and mean_k =
    means[k]: which component explains a demonstration is decided by where its action lies. From a random output
    layer one component can win everywhere within the first steps and explain the data with a mean that moves with
    the state (collapse), and such a mean cannot take two values where the demonstrations part. Distinct points
    spread over the demonstrated actions serve (k-means centres, or points along their first principal axis)."""

    def __init__(self, action_dim, components=5, log_std_min=-4.0, log_std_max=4.0, means=None, shared_std=False):
        self.action_dim = _positive_int("action_dim", action_dim)
        self.K = _positive_int("components", components)
        self.free = self.K * self.action_dim if shared_std else 0  # as GaussianHead's: one log sigma per component
        self.n_out = self.K * (1 + 2 * self.action_dim) - self.free
        self.bounds = _log_std_bounds(log_std_min, log_std_max)
        self.means = None if means is None else check_array("means", np.asarray(means, np.float32), (self.K, None))
        if self.means is not None and self.means.shape[1] != self.action_dim:
            raise ValueError(f"means must have shape ({self.K}, {self.action_dim}), got {self.means.shape}")

    def init_net(self, net, params):
        if self.means is None:
            return
        p, last = net.views(params), len(net.sizes) - 2
        p[f"W{last}"][:] = 0
        b = p[f"b{last}"]
        b[:] = 0  # logits 0: equal weights; raw log_std 0: the middle of the bounds (sigma = 1 for the defaults)
        b[self.K : self.K * (1 + self.action_dim)] = self.means.reshape(-1)

    def split(self, out):
        K, A = self.K, self.action_dim
        logits = out[:, :K]  # (B, K)
        mu = out[:, K : K + K * A].reshape(-1, K, A)  # (B, K, A)
        log_std, dlog_std_draw = bounded_log_std(out[:, K + K * A :].reshape(-1, K, A), *self.bounds)  # (B, K, A)
        return logits, mu, log_std, dlog_std_draw

    def terms(self, out, a):
        logits, mu, log_std, dlog_std_draw = self.split(out)
        log_w = log_softmax(logits)  # (B, K)
        inv_std = np.exp(-log_std)
        z = (a[:, None, :] - mu) * inv_std  # (B, K, A)
        log_n = -(0.5 * z * z + log_std).sum(2) - 0.5 * self.action_dim * LOG_2PI  # log N(a; mu_k, sigma_k)
        log_joint = log_w + log_n  # (B, K)
        log_p = logsumexp(log_joint)  # (B,)  log p = log sum_k w_k N(a; mu_k, sigma_k)
        return log_p, log_w, log_joint, z, inv_std, dlog_std_draw

    def log_prob(self, out, a):
        return self.terms(out, a)[0]

    def nll(self, out, a):
        B = len(a)
        log_p, log_w, log_joint, z, inv_std, dlog_std_draw = self.terms(out, a)
        r = np.exp(log_joint - log_p[:, None])  # (B, K) responsibilities
        dlogits = np.exp(log_w) - r  # dl/dlogits = w - r
        dmu = -r[..., None] * z * inv_std  # dl/dmu_k = -r_k (a - mu_k) / sigma_k^2
        dlog_std = r[..., None] * (1 - z * z)  # dl/dlog_std_k = r_k (1 - z_k^2)
        return -log_p, np.concatenate([dlogits, dmu.reshape(B, -1), (dlog_std * dlog_std_draw).reshape(B, -1)], 1)

    def sample(self, out, rng):
        logits, mu, log_std, _ = self.split(out)
        k = sample_categorical(np.exp(log_softmax(logits)), rng)  # pick a component, then a point in it
        rows = np.arange(len(k))
        noise = rng.standard_normal(mu[rows, k].shape, dtype=np.float32)
        return mu[rows, k] + np.exp(log_std[rows, k]) * noise

    def mode(self, out):
        logits, mu, _, _ = self.split(out)
        return mu[np.arange(len(mu)), logits.argmax(1)]  # the mean of the heaviest component

    def mean(self, out):
        logits, mu, _, _ = self.split(out)
        return (np.exp(log_softmax(logits))[:, :, None] * mu).sum(1)  # sum_k w_k mu_k


def categorical_nll(logits, i):
    """l_b = -log softmax(logits_b)[i_b] (B,) and dl_b/dlogits_b = softmax - onehot (B, C)."""
    rows = np.arange(len(i))
    log_p = log_softmax(logits)  # (B, C)
    dlogits = np.exp(log_p)
    dlogits[rows, i] -= 1
    return -log_p[rows, i], dlogits


def soft_categorical_nll(logits, q):
    """l_b = -sum_c q_bc log softmax(logits_b)_c (B,) and dl_b/dlogits_b = softmax - q_b (B, C): a target q (B, C)."""
    log_p = log_softmax(logits)  # (B, C)
    return -(q * log_p).sum(1), np.exp(log_p) - q


class CategoricalHead(Head):
    """A categorical over a finite set of C action values: values (C,) for 1-D actions or (C, A) vectors.
    Each demonstrated action counts as its nearest value (exact for actions already in the set)."""

    def __init__(self, values):
        v = np.asarray(values, np.float32)
        self.values = v[:, None] if v.ndim == 1 else v  # (C, A)
        if self.values.ndim != 2 or len(self.values) < 2 or not np.isfinite(self.values).all():
            raise ValueError(f"values must be at least two finite values or vectors, got {values}")
        if len(np.unique(self.values, axis=0)) < len(self.values):
            raise ValueError(f"values must be distinct, got {values}")
        self.n_out, self.action_dim = self.values.shape

    def index(self, a):
        return ((a[:, None, :] - self.values) ** 2).sum(2).argmin(1)  # (B,) the nearest value

    def nll(self, out, a):
        return categorical_nll(out, self.index(a))  # l = -log p(a | s)

    def log_prob(self, out, a):
        return log_softmax(out)[np.arange(len(a)), self.index(a)]

    def sample(self, out, rng):
        return self.values[sample_categorical(np.exp(log_softmax(out)), rng)]

    def mode(self, out):
        return self.values[out.argmax(1)]

    def mean(self, out):
        return np.exp(log_softmax(out)) @ self.values  # sum_c p_c value_c


class AutoregressiveHead(Head):
    """Discretized autoregressive actions: p(a | s) = prod_d p(a_d | a_<d, s), each factor a categorical
    over C equal bins of dimension d's bounds; a sample is drawn uniformly inside its bin.

    Wiring: one shared network, called once per dimension d on [s, centres of the bins already chosen
    for dimensions < d (zero for d and later), one-hot of d] -> C logits. One network learns from every
    dimension's data and keeps this head a plain use of the MLP and the categorical loss above; the
    masked input makes the factorisation exact (the factor for d never sees a_d or later). Conditioning
    on bin centres, not raw values, makes the model an exact distribution over the C^A grid of bins.

    smoothing s > 0 trains each factor on the bin of clip(a_d + s eps), eps standard logistic, instead of a_d's
    own bin (label smoothing that knows the bins are ordered; the clip puts the tails in the end bins, as the
    environment clips actions). Neighbouring bins then share what each label teaches: one bin that holds most
    labels no longer wins wherever data are sparse. Only the training target changes: log_prob stays exact.
    """

    def __init__(self, low, high, bins=11, smoothing=0.0):
        self.low, self.high = _action_bounds(low, high)
        self.action_dim, self.n_out = len(self.low), _positive_int("bins", bins, minimum=2)
        self.smoothing = _real("smoothing", smoothing, 0)

    def net_in(self, obs_dim):
        return obs_dim + 2 * self.action_dim

    def bins(self, a):
        k = np.floor((a - self.low) / (self.high - self.low) * self.n_out)
        return np.clip(k, 0, self.n_out - 1).astype(np.int64)  # (B, A)

    def centres(self, k):
        return (-1 + (2 * k + 1) / self.n_out).astype(np.float32)  # bin centres scaled to [-1, 1]

    def inputs(self, obs, chosen, d):
        B, O, A = len(obs), obs.shape[1], self.action_dim
        x = np.zeros((B, O + 2 * A), obs.dtype)
        x[:, :O] = obs
        x[:, O : O + d] = chosen[:, :d]  # only the earlier dimensions: the mask
        x[:, O + A + d] = 1  # which dimension is asked for
        return x

    def policy_loss(self, net, params, obs, a, rng, grad, w=None, workspace=None, obs_grad=False):
        k, A, B = self.bins(a), self.action_dim, len(obs)  # k (B, A)
        x = np.concatenate([self.inputs(obs, self.centres(k), d) for d in range(A)])  # (A B, O + 2A)
        out, cache = mlp_forward(net, params, x, buffers(workspace, "net", net, x, params))
        if self.smoothing:  # q (A B, C): P(bin of clip(a + s eps) = c) = F(right edge) - F(left edge), F logistic
            edges = self.low + (self.high - self.low) * np.arange(self.n_out + 1.0)[:, None] / self.n_out  # (C+1, A)
            cdf = sigmoid((edges - a[:, None, :]) / self.smoothing, np.empty((B, self.n_out + 1, A), np.float32))
            cdf[:, 0], cdf[:, -1] = 0, 1  # (B, C+1, A) the clip: tails fall in the end bins
            l, dl = soft_categorical_nll(out, np.diff(cdf, axis=1).transpose(2, 0, 1).reshape(A * B, -1))
        else:
            l, dl = categorical_nll(out, k.T.reshape(-1))  # teacher forcing: the true earlier bins; rows (d, b)
        # l_b = -sum_d log p(k_bd | k_b<d, s_b) + sum_d log width_d = -log p(a_b | s_b), as in policy_log_prob
        # (with smoothing, the cross-entropy to the smoothed target in place of -log p(k_bd | k_b<d, s_b))
        l = l.reshape(A, B).sum(0) + np.log((self.high - self.low) / self.n_out).sum()
        scale = example_weights(w, l)
        dx = mlp_backward(net, params, dl * np.tile(scale, A)[:, None], cache, grad, obs_grad)
        loss = float(scale @ l)
        return loss, None if dx is None else dx.reshape(A, B, -1)[:, :, : obs.shape[1]].sum(0)

    def log_prob_bins(self, net, params, obs, k):
        """log p(k | s) of whole bin vectors k (B, A): the sum of the per-dimension log-probabilities."""
        chosen, total = self.centres(k), 0
        for d in range(self.action_dim):
            log_p = log_softmax(mlp_forward(net, params, self.inputs(obs, chosen, d))[0])
            total = total + log_p[np.arange(len(k)), k[:, d]]
        return total

    def policy_log_prob(self, net, params, obs, a):
        """log density of continuous actions: log p(bins) - sum_d log(bin width_d); uniform inside a cell."""
        return self.log_prob_bins(net, params, obs, self.bins(a)) - np.log((self.high - self.low) / self.n_out).sum()

    def decode(self, net, params, obs, pick):
        """Choose bins one dimension at a time with pick(logits) -> (B,) bins; returns the bins (B, A)."""
        k = np.zeros((len(obs), self.action_dim), np.int64)
        chosen = np.zeros((len(obs), self.action_dim), np.float32)
        for d in range(self.action_dim):
            k[:, d] = pick(mlp_forward(net, params, self.inputs(obs, chosen, d))[0])
            chosen[:, d] = self.centres(k[:, d])
        return k

    def policy_sample(self, net, params, obs, rng):
        k = self.decode(net, params, obs, lambda logits: sample_categorical(np.exp(log_softmax(logits)), rng))
        u = rng.random(k.shape, dtype=np.float32)  # uniform inside the chosen bin
        return self.low + (k.astype(np.float32) + u) / self.n_out * (self.high - self.low)

    def policy_mode(self, net, params, obs):
        k = self.decode(net, params, obs, lambda logits: logits.argmax(1))  # greedy, dimension by dimension
        return self.low + (k.astype(np.float32) + 0.5) / self.n_out * (self.high - self.low)


class Schedule(NamedTuple):
    beta: np.ndarray  # (N,) noise added at step n
    alpha: np.ndarray  # (N,) 1 - beta
    alpha_bar: np.ndarray  # (N,) prod_{m <= n} alpha_m, so q(a_n | a_0) = N(sqrt(alpha_bar_n) a_0, 1 - alpha_bar_n)


def cosine_schedule(steps=100, s=0.008, max_beta=0.999, shift=1.0):
    """Nichol & Dhariwal's cosine schedule (diffusers' "squaredcos_cap_v2"), in float64:
    alpha_bar(t) = f(t) / f(0), f(t) = cos^2((t / N + s) / (1 + s) pi / 2);
    beta_n = min(1 - alpha_bar_n / alpha_bar_{n-1}, max_beta).
    shift k multiplies every level's signal-to-noise ratio alpha_bar / (1 - alpha_bar) by k^2, as if the data were k
    times larger (a shifted schedule: Hoogeboom, Heek & Salimans 2023; Chen 2023), after the max_beta cap. k > 1
    gives more of the levels to detail finer than [-1, 1], such as two modes of an action that lie close together."""
    N = _positive_int("steps", steps)
    _real("max_beta", max_beta, 0, 1, open_low=True, open_high=True)
    _real("shift", shift, 1e-3, 1e3)  # SNR times 1e6 at most: beyond that every level is nearly noise-free
    f = np.cos((np.arange(N + 1) / N + s) / (1 + s) * np.pi / 2) ** 2
    beta = np.minimum(1 - f[1:] / f[:-1], max_beta)
    alpha = 1 - beta
    if shift == 1:
        return Schedule(beta, alpha, np.cumprod(alpha))
    ab = np.cumprod(alpha)
    ab = ab * shift**2 / (1 + ab * (shift**2 - 1))  # SNR' = k^2 SNR, with SNR = ab / (1 - ab)
    alpha = ab / np.concatenate([[1.0], ab[:-1]])
    return Schedule(1 - alpha, alpha, ab)


def sinusoidal_forward(n, dim):
    """Transformer-style embedding of step indices n (B,) -> (B, dim):
    [sin(n w_j), cos(n w_j)] with w_j = 10000^(-j / (dim / 2))."""
    w = np.exp(-math.log(10000) * np.arange(dim // 2) / (dim // 2))  # (dim/2,)
    angle = np.asarray(n, np.float64)[:, None] * w  # (B, dim/2)
    return np.concatenate([np.sin(angle), np.cos(angle)], 1)


def ddpm_sample(eps_fn, x, schedule, rng, clip=1.0):
    """Ancestral sampling through all N steps: x_{n-1} ~ q(x_{n-1} | x_n, x0_hat), x0_hat clipped to +-clip."""
    beta, alpha, alpha_bar = schedule
    for n in reversed(range(len(beta))):
        ab, ab_prev = float(alpha_bar[n]), float(alpha_bar[n - 1]) if n > 0 else 1.0
        x0 = np.clip((x - math.sqrt(1 - ab) * eps_fn(x, n)) / math.sqrt(ab), -clip, clip)  # x0_hat
        # posterior mean mu~ = (sqrt(ab_prev) beta x0 + sqrt(alpha) (1 - ab_prev) x_n) / (1 - ab)
        x = (math.sqrt(ab_prev) * float(beta[n]) * x0 + math.sqrt(float(alpha[n])) * (1 - ab_prev) * x) / (1 - ab)
        if n > 0:  # beta~ = beta (1 - ab_prev) / (1 - ab)
            x = x + math.sqrt(float(beta[n]) * (1 - ab_prev) / (1 - ab)) * rng.standard_normal(x.shape, dtype=x.dtype)
    return x


def ddim_sample(eps_fn, x, alpha_bar, steps, clip=1.0):
    """Deterministic DDIM (eta = 0) over `steps` evenly spaced steps out of N:
    x0_hat = (x_n - sqrt(1 - ab_n) eps) / sqrt(ab_n);  x_prev = sqrt(ab_prev) x0_hat + sqrt(1 - ab_prev) eps."""
    N = len(alpha_bar)
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or not 1 <= steps <= N:
        raise ValueError(f"steps must be an integer in [1, N={N}], got {steps!r}")
    ns = np.round(np.linspace(N - 1, 0, steps)).astype(np.int64)  # distinct since spacing >= 1
    for j, n in enumerate(ns):
        ab = float(alpha_bar[n])
        ab_prev = float(alpha_bar[ns[j + 1]]) if j + 1 < steps else 1.0
        eps = eps_fn(x, n)
        x0 = np.clip((x - math.sqrt(1 - ab) * eps) / math.sqrt(ab), -clip, clip)  # x0_hat
        x = math.sqrt(ab_prev) * x0 + math.sqrt(1 - ab_prev) * eps
    return x


class DiffusionHead(Head):
    """DDPM with epsilon-prediction (Ho et al. 2020) over actions scaled to [-1, 1]: the network
    eps_theta([a_n, embedding(n), s]) predicts the noise in a_n = sqrt(ab_n) a_0 + sqrt(1 - ab_n) eps.
    Loss E||eps - eps_theta||^2; sampling by DDPM through all N steps or DDIM through S <= N.
    shift: the schedule's (cosine_schedule). input_scale multiplies a_n and embedding(n) on their way into the
    network. Observations scaled up for sharp tanh units leave a_n at unit scale too weak to move the first layer's
    units, and with Adam an input's scale is also its learning rate: the noise prediction then hardly learns to
    depend on a_n, and that dependence is what separates modes."""

    def __init__(self, low, high, steps=100, sample_steps=10, sampler="ddim", embed_dim=16, shift=1.0, input_scale=1.0):
        self.low, self.high = _action_bounds(low, high)
        self.action_dim = self.n_out = len(self.low)
        self.schedule = cosine_schedule(steps, shift=shift)
        self.input_scale = np.float32(_real("input_scale", input_scale, 1e-3, 1e3))
        if not _positive_int("sample_steps", sample_steps) <= steps:
            raise ValueError(f"sample_steps must lie in [1, steps={steps}], got {sample_steps}")
        if sampler not in ("ddim", "ddpm"):
            raise ValueError(f"sampler must be 'ddim' or 'ddpm', got {sampler!r}")
        dim = _positive_int("embed_dim", embed_dim, minimum=2)
        self.sample_steps, self.sampler = int(sample_steps), sampler
        embedding = sinusoidal_forward(np.arange(steps), dim - dim % 2)
        self.embedding = (embedding * self.input_scale).astype(np.float32)  # (N, E), input_scale included

    def net_in(self, obs_dim):
        return self.action_dim + self.embedding.shape[1] + obs_dim

    def policy_loss(self, net, params, obs, a, rng, grad, w=None, workspace=None, obs_grad=False):
        B = len(a)
        x0 = (2 * (a - self.low) / (self.high - self.low) - 1).astype(obs.dtype)  # (B, A) in [-1, 1]
        n = rng.integers(0, len(self.embedding), B)  # a noise level per example
        eps = rng.standard_normal(x0.shape).astype(obs.dtype)
        ab = self.schedule.alpha_bar[n][:, None].astype(obs.dtype)
        xn = np.sqrt(ab) * x0 + np.sqrt(1 - ab) * eps  # a_n ~ q(a_n | a_0) in closed form
        x = np.concatenate([xn * self.input_scale, self.embedding[n].astype(obs.dtype), obs], 1)
        out, cache = mlp_forward(net, params, x, buffers(workspace, "net", net, x, params))
        diff = out - eps  # (B, A)
        loss, dout = weigh((diff * diff).sum(1), 2 * diff, w)  # l = ||eps_theta - eps||^2
        dx = mlp_backward(net, params, dout, cache, grad, obs_grad)
        return loss, None if dx is None else dx[:, -obs.shape[1] :]

    def eps_fn(self, net, params, obs):
        def eps_theta(x, n):  # the network's noise prediction at level n
            emb = np.broadcast_to(self.embedding[n].astype(x.dtype), (len(x), self.embedding.shape[1]))
            return mlp_forward(net, params, np.concatenate([x * self.input_scale, emb, obs], 1))[0]

        return eps_theta

    def unscale(self, x0):
        return np.clip(self.low + (x0 + 1) / 2 * (self.high - self.low), self.low, self.high)  # within bounds

    def policy_log_prob(self, net, params, obs, a):
        raise NotImplementedError("a diffusion policy has no tractable likelihood")

    def policy_sample(self, net, params, obs, rng):
        x = rng.standard_normal((len(obs), self.action_dim), dtype=np.float32)  # a_N ~ N(0, I)
        if self.sampler == "ddpm":
            return self.unscale(ddpm_sample(self.eps_fn(net, params, obs), x, self.schedule, rng))
        return self.unscale(ddim_sample(self.eps_fn(net, params, obs), x, self.schedule.alpha_bar, self.sample_steps))

    def policy_mode(self, net, params, obs):
        """DDIM from a_N = 0, the prior's mode: deterministic, and the mode of a unimodal action distribution.
        With two symmetric modes it lands between them (the noise prediction at 0 is 0): sample() instead."""
        x = np.zeros((len(obs), self.action_dim), np.float32)
        return self.unscale(ddim_sample(self.eps_fn(net, params, obs), x, self.schedule.alpha_bar, self.sample_steps))


def stratified_normal(n, dim, seed):
    """n draws of N(0, I_dim), stratified: in each coordinate one draw per probability interval [(k, k + 1) / n),
    the intervals shuffled independently per coordinate (Latin hypercube). Each draw is still N(0, I), so an
    average over them stays unbiased; seeded, so the same every call."""
    rng = np.random.default_rng(seed)
    u = (rng.permuted(np.tile(np.arange(n), (dim, 1)), axis=1).T + rng.random((n, dim))) / n  # (n, dim) in (0, 1)
    return np.vectorize(statistics.NormalDist().inv_cdf, otypes=[float])(u)


class CVAEHead(Head):
    """A latent-variable policy, the conditional VAE (ACT in LeRobot uses one). Encoder q(z | s, a) =
    N(mu_q, diag sigma_q^2), decoder p(a | s, z) a diagonal Gaussian (GaussianHead), prior p(z) = N(0, I).
    Loss: the negative ELBO, l = -log p(a | s, z) + beta KL(q(z | s, a) || p(z)), with z = mu_q + sigma_q eps
    (reparameterised, eps ~ N(0, I)). The policy's network is the decoder, on [s, z]; the encoder, on [s, a]
    with the same hidden widths, sits after it in the flat parameter vector. sample() draws z from the prior
    and samples the decoder; act() decodes z = 0, the prior's mode (not necessarily a data mode).
    shared_std: the decoder's log sigma is one parameter per action dimension (GaussianHead's shared_std), placed
    between the decoder's network and the encoder. A decoder sigma(s) has the Gaussian head's trouble: where it
    grows, the decoder's mean there stops learning, and act() decodes that mean."""

    def __init__(
        self, action_dim, latent_dim=2, beta=1.0, log_std_min=-4.0, log_std_max=4.0, samples=128, shared_std=False
    ):
        self.decoder = GaussianHead(action_dim, log_std_min, log_std_max, shared_std)
        self.action_dim, self.n_out = self.decoder.action_dim, self.decoder.n_out
        self.latent_dim, self.samples = _positive_int("latent_dim", latent_dim), _positive_int("samples", samples, 2)
        self.beta = _real("beta", beta, 0)

    def net_in(self, obs_dim):
        return obs_dim + self.latent_dim

    def encoder(self, net):
        """q's network, read off the decoder's: [s, a] -> (mu_q, raw log sigma_q) (B, 2 L), same hidden widths."""
        return MLP(
            (net.sizes[0] - self.latent_dim + self.action_dim, *net.sizes[1:-1], 2 * self.latent_dim), net.activation
        )

    def init_extra(self, net, rng):
        return np.concatenate([self.decoder.init_extra(net, rng), self.encoder(net).init(rng)])

    def posterior(self, net, params, obs, a, workspace=None):
        enc, x = self.encoder(net), np.concatenate([obs, a], 1)
        start = net.n_params + self.decoder.free  # the encoder's parameters: after the decoder's
        q, cache = mlp_forward(enc, params[start:], x, buffers(workspace, "encoder", enc, x, params))
        L = self.latent_dim
        return q[:, :L], *bounded_log_std(q[:, L:], -4.0, 0.0), cache  # mu_q, log sigma_q (B, L), sigma_q <= 1

    def decode(self, net, params, obs, z, workspace=None):
        """The decoder's outputs (mean and raw log-std of p(a | s, z)) and its cache."""
        x = np.concatenate([obs, z], 1)
        return self.decoder.outputs(net, params, x, buffers(workspace, "decoder", net, x, params))

    def policy_loss(self, net, params, obs, a, rng, grad, w=None, workspace=None, obs_grad=False):
        O, beta = obs.shape[1], self.beta
        mu, log_std, dlog_std_draw, q_cache = self.posterior(net, params, obs, a, workspace)
        std, eps = np.exp(log_std), rng.standard_normal(mu.shape).astype(mu.dtype)
        z = mu + std * eps  # z ~ q(z | s, a), reparameterised
        out, cache = self.decode(net, params, obs, z, workspace)
        recon, drecon = self.decoder.nll(out, a)  # -log p(a | s, z) (B,)
        kl = 0.5 * (mu * mu + std * std - 1 - 2 * log_std).sum(1)  # KL(N(mu, sigma^2) || N(0, I)) (B,)
        scale = example_weights(w, recon + beta * kl)  # w_i / B
        drecon = self.decoder.free_backward(net, drecon * scale[:, None], grad)  # shared_std: its log sigma's part
        dx = mlp_backward(net, params, drecon, cache, grad)  # d/d[s, z] (B, O + L)
        dz, s = dx[:, O:], scale[:, None]
        dmu = dz + beta * mu * s  # term 1 through z (dz/dmu = 1); term 2: dKL/dmu = mu
        # term 1 through z (dz/dlog sigma = sigma eps); term 2: dKL/dlog sigma = sigma^2 - 1
        dlog_std = dz * std * eps + beta * (std * std - 1) * s
        enc = self.encoder(net)
        dq = np.concatenate([dmu, dlog_std * dlog_std_draw], 1)
        start = net.n_params + self.decoder.free  # the encoder's parameters: after the decoder's
        dx_enc = mlp_backward(enc, params[start:], dq, q_cache, grad[start:], obs_grad)
        return float(scale @ (recon + beta * kl)), dx[:, :O] + dx_enc[:, :O] if obs_grad else None

    def policy_log_prob(self, net, params, obs, a):
        """log p(a | s) by defensive importance sampling: K = samples draws, the first half from q(z | s, a) and
        the rest from the prior, each weighted against the mixture r = (K_q q + K_p p) / K that drew them:
        log 1/K sum_k p(a | s, z_k) p(z_k) / r(z_k). A Gaussian q is often narrower than the true posterior
        (here, half the prior cut off where the decoder switches modes), and weights p / q alone then have tails
        that a few draws blow up (+0.5 nats at K = 64); against r they stay below K / K_p p(a | s, z). Unbiased inside
        the log, so a lower bound in expectation; the draws come from a generator seeded with 0 (deterministic)."""
        mu, log_std, _, _ = self.posterior(net, params, obs, a)
        std, K, L = np.exp(log_std), self.samples, self.latent_dim
        half = K // 2
        eps = np.concatenate([stratified_normal(half, L, 0), stratified_normal(K - half, L, 1)])  # (K, L)
        eps = np.broadcast_to(eps[:, None, :], (K, *mu.shape)).astype(mu.dtype)  # the same for every row
        log_w = []
        for k, e in enumerate(eps):  # one decoder pass per draw: memory stays (B, H)
            z = mu + std * e if k < half else e  # z ~ q(z | s, a), then z ~ p(z) (B, L)
            log_q = -0.5 * (((z - mu) / std) ** 2).sum(1) - log_std.sum(1) - 0.5 * L * LOG_2PI  # log q(z | s, a)
            log_p = -0.5 * (z * z).sum(1) - 0.5 * L * LOG_2PI  # log p(z)
            log_r = np.logaddexp(log_q + math.log(half / K), log_p + math.log((K - half) / K))  # log r(z)
            log_w.append(self.decoder.log_prob(self.decode(net, params, obs, z)[0], a) + log_p - log_r)
        return logsumexp(np.stack(log_w, 1)) - math.log(K)

    def policy_sample(self, net, params, obs, rng):
        z = rng.standard_normal((len(obs), self.latent_dim), dtype=np.float32)  # z ~ p(z): picks a mode
        return self.decoder.sample(self.decode(net, params, obs, z.astype(obs.dtype))[0], rng)

    def policy_mode(self, net, params, obs):
        return self.decoder.mode(self.decode(net, params, obs, np.zeros((len(obs), self.latent_dim), obs.dtype))[0])


class Policy:
    """A head on an MLP. Everything training changes is the one flat float32 vector self.params."""

    def __init__(self, head, obs_dim, rng, hidden=(64, 64), activation="relu"):
        self.head, self.obs_dim = _config("head", head, Head), _positive_int("obs_dim", obs_dim)
        if not isinstance(hidden, (tuple, list, np.ndarray)):
            raise TypeError(f"hidden must be a tuple of layer widths, e.g. (64, 64), got {hidden!r}")
        hidden = [_positive_int("hidden", h) for h in hidden]
        self.net = MLP((head.net_in(self.obs_dim), *hidden, head.n_out), activation)
        self.params = self.init(_generator(rng))
        self.workspace = {}  # activation buffers per batch size, reused by every training step

    def init(self, rng):
        """Fresh parameters: the network's (as the head shapes them), then any the head adds (the CVAE's encoder)."""
        params = np.concatenate([self.net.init(rng), self.head.init_extra(self.net, rng)])
        self.head.init_net(self.net, params[: self.net.n_params])  # a view: writes into params
        return params

    def check(self, obs, *actions):
        """obs (B, O) [and actions (B, A)] as float32, or a clear error; (B,) actions serve a one-dimensional head."""
        obs = as_float32("obs", obs, (None, self.obs_dim))
        if len(obs) == 0:
            raise ValueError("obs is empty: need at least one observation")
        return (obs, *[as_float32("actions", a, (len(obs), self.head.action_dim)) for a in actions]) if actions else obs

    def __getstate__(self):  # pickle and deepcopy: the parameters, not the training buffers
        return {**self.__dict__, "workspace": {}}

    def log_prob(self, obs, a):
        """log p(a | s) (B,): a density for continuous actions, a probability for categorical ones."""
        return self.head.policy_log_prob(self.net, self.params, *self.check(obs, a))

    def sample(self, obs, rng):
        return self.head.policy_sample(self.net, self.params, self.check(obs), _generator(rng))

    def act(self, obs):
        """The deterministic action: the head's mean or mode."""
        return self.head.policy_mode(self.net, self.params, self.check(obs))

    def mean(self, obs):
        """The mean action E[a | s] (for a multimodal head, not an action the policy would take)."""
        return self.head.policy_mean(self.net, self.params, self.check(obs))

    def save(self, path):
        """One .npz, without pickles: the head's class and constructor arguments, obs_dim, the hidden widths, the
        activation and the parameters. load_policy(path) gives back a policy that acts and samples bit for bit
        like this one (a Recurrent one with its memory). Returns the path written (".npz" appended if missing)."""
        args = {f"head.{k}": np.asarray(v) for k, v in self.head.args.items() if v is not None}
        memory = self.gru.sizes[1] if hasattr(self, "gru") else 0  # a Recurrent's obs_dim counts its memory
        return save_npz(
            path,
            head=np.str_(type(self.head).__name__),
            obs_dim=self.obs_dim - memory,
            memory=memory,
            hidden=np.array(self.net.sizes[1:-1]),
            activation=np.str_(self.net.activation),
            params=self.params,
            **args,
        )

    def copy(self):
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__, params=self.params.copy(), workspace={})
        return new


class Recurrent(Policy):
    """A head on [o_t, h_t], where h_t = GRU(h_{t-1}, o_t) carries what the episode showed so far (h = 0 where an
    episode begins). As a Policy it is the head on those inputs (obs_dim = O + H: act, sample and log_prob take
    [o, h]); the GRU's parameters follow the head's in the flat vector. bc trains it on whole episodes (mask=...);
    rollout runs it through a RecurrentActor, which carries h from step to step."""

    def __init__(self, head, obs_dim, rng, hidden=(64, 64), activation="relu", memory=32):
        self.gru = GRU((_positive_int("obs_dim", obs_dim), _positive_int("memory", memory)))
        super().__init__(head, obs_dim + memory, rng, hidden, activation)

    def init(self, rng):
        return np.concatenate([super().init(rng), self.gru.init(rng)])  # [head's network, head's extra, GRU]

    def split(self, flat):
        """Views of a flat vector (parameters or gradient): the head's part and the GRU's."""
        return flat[: -self.gru.n_params], flat[-self.gru.n_params :]

    def check_episodes(self, obs, a, mask):
        """Episodes obs (n, T, O), actions (n, T, A) (or (n, T) for one dimension) and mask (n, T), checked."""
        obs, a = as_float32("obs", obs, (None, None, self.gru.sizes[0])), as_float32("actions", a)
        a = check_array("actions", a[..., None] if a.ndim == 2 else a, (*obs.shape[:2], self.head.action_dim))
        mask = check_array("mask", np.asarray(mask), obs.shape[:2])
        if mask.dtype != bool and not np.isin(mask, (0, 1)).all():
            raise ValueError("mask must hold booleans (or 0 and 1)")
        mask = mask.astype(bool)
        if not mask.any(1).all():
            raise ValueError("every episode needs at least one real step (mask)")
        return obs, a, mask

    def sequence_loss(self, obs, a, mask, rng, grad, w=None):
        """The head's loss over the real steps of episodes obs (B, T, O), a (B, T, A), mask (B, T) (each row starts
        an episode at t = 0), with w (M,) per real step (None: the mean). dL/dh_t comes from the head, as its
        gradient for the h part of its input, and runs back through time into the GRU. Writes grad; returns L."""
        steps = mask.any(0).nonzero()[0][-1] + 1  # up to the batch's longest episode: the rest is padding
        obs, a, mask = obs[:, :steps], a[:, :steps], mask[:, :steps]
        head, gru = self.split(self.params)
        dhead, dgru = self.split(grad)
        start = np.zeros(mask.shape, bool)  # (B, T)
        start[:, 0] = True  # h = 0 at each row's first step
        hs, cache = gru_forward(self.gru, gru, obs, start)  # (B, T, H)
        x = np.concatenate([obs, hs], 2)[mask]  # (M, O + H): the head's inputs at the M real steps
        loss, dx = self.head.policy_loss(self.net, head, x, a[mask], rng, dhead, w, self.workspace, obs_grad=True)
        dhs = np.zeros_like(hs)
        dhs[mask] = dx[:, obs.shape[2] :]  # dL/dh_t, zero at padded steps
        gru_backward(self.gru, gru, dhs, cache, dgru)
        return loss


class RecurrentActor:
    """A Recurrent policy acting in a vector env: one hidden state per sub-environment, carried from step to step.
    rollout calls reset(rows) (rows (n,) bool) after env.reset and for rows whose next observation starts an
    episode, and h is set to 0 there. Samples with an rng (stochastic), else takes the deterministic action."""

    def __init__(self, policy, rng=None, stochastic=False):
        self.policy, self.stochastic, self.h = _config("policy", policy, Recurrent), stochastic, None
        self.rng = _generator(rng) if stochastic else rng

    def reset(self, rows):
        if self.h is None or len(self.h) != len(rows):  # a new vector env: every row starts afresh
            self.h = np.zeros((len(rows), self.policy.gru.sizes[1]), np.float32)
        self.h[rows] = 0

    def __call__(self, obs):
        gru = self.policy.split(self.policy.params)[1]
        no_start = np.zeros((len(obs), 1), bool)  # resets come through reset(rows)
        self.h = gru_forward(self.policy.gru, gru, obs[:, None], no_start, self.h)[0][:, 0]  # h_t = GRU(h_{t-1}, o_t)
        x = np.concatenate([obs, self.h], 1)  # (n, O + H)
        return self.policy.sample(x, self.rng) if self.stochastic else self.policy.act(x)


def _generator(rng):
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    return rng


def save_npz(path, **arrays):
    """Write arrays to a .npz (".npz" appended if missing, as numpy does) through a temporary file and a rename, so
    that an interrupted save never leaves a half-written file under the name. Returns the path written."""
    path = Path(path)
    path = path if path.suffix == ".npz" or path.is_dir() else path.with_name(path.name + ".npz")
    if path.is_dir():
        raise ValueError(f"save: {path} is a directory; give a file name, e.g. {path / 'name.npz'}")
    if any(np.asarray(v).dtype.kind == "O" for v in arrays.values()):
        raise ValueError(f"save: every field must be a plain array (no objects, no pickles): {sorted(arrays)}")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_npz(path, read, kind):
    """read(z) on the .npz at path, opened without pickles; any failure but a missing file is a ValueError naming
    the file."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return read(z)
    except FileNotFoundError:
        raise
    except Exception as e:  # a truncated or foreign file, a text file, a bad field: whatever went wrong
        raise ValueError(f"{path}: not a valid {kind} file: {e}") from e


def load_policy(path):
    """The policy Policy.save wrote, checked: a head imitate knows, its arguments, and finite float32 parameters
    of the network's size."""

    def read(z):
        heads = (L2Head, GaussianHead, MixtureHead, CategoricalHead, AutoregressiveHead, DiffusionHead, CVAEHead)
        heads = {c.__name__: c for c in heads}  # imitate's own: a file names a class, never code to run
        kind = str(z["head"])
        if kind not in heads:
            raise ValueError(f"unknown head {kind!r}")
        args = {k[5:]: z[k].item() if z[k].ndim == 0 else z[k] for k in z.files if k.startswith("head.")}
        hidden = tuple(int(h) for h in check_array("hidden", z["hidden"], (None,)))
        shape = (int(z["obs_dim"]), np.random.default_rng(0), hidden, str(z["activation"]))
        memory = int(z["memory"]) if "memory" in z.files else 0
        policy = (
            Recurrent(heads[kind](**args), *shape, memory=memory) if memory else Policy(heads[kind](**args), *shape)
        )
        policy.params = check_array("params", z["params"], policy.params.shape, np.float32).copy()
        return policy

    return load_npz(path, read, "policy")


# ---- behavior cloning ----


@dataclass(frozen=True)
class TrainConfig:
    """Minibatch training of a policy on (observation, action) pairs."""

    steps: int = 1000  # gradient steps
    batch_size: int = 256  # pairs per step, drawn uniformly with replacement
    lr: float = 1e-3  # Adam's step size
    cosine: bool = True  # decay the step size to zero along half a cosine (False: constant)
    max_grad_norm: float = 0.0  # clip the global gradient norm to this; 0 turns clipping off

    def __post_init__(self):
        _positive_int("steps", self.steps)
        _positive_int("batch_size", self.batch_size)
        _real("lr", self.lr, 0, 1, open_low=True)
        _real("max_grad_norm", self.max_grad_norm, 0)

    def step_size(self, step):
        """Adam's step size at `step`: lr (1 + cos(pi step / steps)) / 2 with cosine, else lr."""
        return self.lr * 0.5 * (1 + math.cos(math.pi * step / self.steps)) if self.cosine else self.lr


def bc(policy, obs, actions, rng, cfg=TrainConfig(), mask=None):
    """Behavior cloning: minimise the head's loss on expert pairs by minibatch Adam. Returns the loss history.
    Stops with a ValueError at the first step whose loss or gradient is not finite, before that step's update.
    A Recurrent policy learns from whole episodes instead: obs (n, T, O), actions (n, T, A) and mask (n, T) (a
    Trajectories' observations[:, :-1], labels and mask); a minibatch is batch_size episodes."""
    rng, cfg = _generator(rng), _config("cfg", cfg, TrainConfig)
    if hasattr(_config("policy", policy, Policy), "sequence_loss") != (mask is not None):  # duck-typed: see Recurrent
        raise ValueError("a Recurrent policy trains on episodes with their mask (n, T); any other policy on pairs")
    obs, actions, *mask = policy.check(obs, actions) if mask is None else policy.check_episodes(obs, actions, mask)
    opt = Adam(policy.params.size, cfg.lr, max_norm=cfg.max_grad_norm)
    losses, grad = np.empty(cfg.steps, np.float32), np.empty_like(policy.params)
    for step in range(cfg.steps):
        opt.lr = cfg.step_size(step)
        i = rng.integers(0, len(obs), cfg.batch_size)
        if mask:  # recurrent: batch_size whole episodes, backpropagation through time
            losses[step] = policy.sequence_loss(obs[i], actions[i], mask[0][i], rng, grad)
        else:
            losses[step], _ = policy.head.policy_loss(
                policy.net, policy.params, obs[i], actions[i], rng, grad, None, policy.workspace
            )
        opt.step(policy.params, grad, losses[step], f"bc: step {step}")
    return losses


# ---- toy world ----
# Four tasks, each a batch of n environments stepped by one numba kernel, each with a scripted expert
# that reads the true state and can label any state. Kernels take their randomness as arrays of
# uniforms drawn by the env's np.random.Generator, so a kernel and its .py_func agree bit for bit.


@njit(cache=True)
def road_step(x, c, r, expert, move, u, reset, eps, lanes, persist, start):
    """One step of n roads, in place. State: lateral offset x in lanes (0 is the road), the turn c in
    {-1, 0, 1} the road takes this step, and the learner's reading r of c, wrong with probability eps.
    The car moves sideways by a - c, so steering with the turn keeps the lane. Rows with reset[i] start
    over at x = 0, or uniformly in -start..start (their move is ignored). u (n, 3) uniforms draw the next
    turn and its reading; with persist > 0 or start > 0, u (n, 5): the turn is kept with probability
    persist (else drawn afresh), u[:, 4] draws the start. expert (n, 1) holds pi*(s) for the current
    state. Returns the costs c(s, a) = 1[a != pi*(s)]."""
    cost = np.zeros(x.size, np.float32)
    for i in range(x.size):
        if reset[i]:
            x[i] = 0 if start == 0 else int(u[i, 4] * (2 * start + 1)) - start
        else:
            a = int(min(max(np.floor(move[i] + 0.5), -2.0), 2.0))  # the executed move, rounded
            cost[i] = 1.0 if a != expert[i, 0] else 0.0
            x[i] = min(max(x[i] + a - c[i], -lanes), lanes)
        if reset[i] or persist == 0 or u[i, 3] >= persist:
            c[i] = int(u[i, 0] * 3) - 1  # the next turn, uniform over {-1, 0, 1}
        r[i] = c[i] if u[i, 1] >= eps else (c[i] + 2 + int(u[i, 2] * 2)) % 3 - 1  # or one of the other two
        expert[i, 0] = min(max(c[i] - x[i], -2), 2)  # pi*(s): steer with the turn and back to the centre
    return cost


@njit(cache=True)
def tree_expert(x, y, side, radius):
    """Straight at the tree, then a swerve to the hidden side that steepens as the tree comes closer,
    then straight up past it; unit speed. The demonstrations agree far from the tree and part only
    gradually, so their average keeps going straight on, into the tree."""
    if y >= 0 or abs(x) >= 1.5 * radius:  # past the tree, or beside it
        return 0.0, 1.0
    s = side if abs(x) < 0.5 * radius else (1.0 if x > 0 else -1.0)  # keep to a side already taken
    g = min(max((y + 3 * radius) / (1.5 * radius), 0.0), 1.0)  # 0 far away, 1 from 1.5 radii before the tree
    if x * x + y * y < (radius + 0.05) ** 2:  # touching distance: mostly sideways
        g = 3.0
    return s * g / math.sqrt(1 + g * g), 1 / math.sqrt(1 + g * g)


@njit(cache=True)
def tree_step(pos, side, expert, action, u, reset, radius, goal_y, dt, tol, start, corridor=0):
    """One step of n point masses that must pass a round tree at the origin to reach y >= goal_y, in
    place. Rows with reset[i] start at (0, -1 - corridor dt - start u0) with a fresh hidden side (u1). expert (n, 2)
    holds pi*(s). Returns costs 1[||a - pi*(s)|| > tol], terminations (hit the tree or arrived), success."""
    n = pos.shape[0]
    cost, done, success = np.zeros(n, np.float32), np.zeros(n, np.bool_), np.zeros(n, np.bool_)
    for i in range(n):
        if reset[i]:
            pos[i, 0], pos[i, 1] = 0.0, -1.0 - corridor * dt - start * u[i, 0]  # below the tree, a random distance
            side[i] = 1.0 if u[i, 1] < 0.5 else -1.0  # the expert's hidden choice: left or right
        else:
            ax, ay = min(max(action[i, 0], -1.0), 1.0), min(max(action[i, 1], -1.0), 1.0)
            cost[i] = 1.0 if math.sqrt((ax - expert[i, 0]) ** 2 + (ay - expert[i, 1]) ** 2) > tol else 0.0
            pos[i, 0] += dt * ax
            pos[i, 1] += dt * ay
            hit = pos[i, 0] ** 2 + pos[i, 1] ** 2 < radius**2
            success[i] = pos[i, 1] >= goal_y and not hit
            done[i] = hit or success[i]
        expert[i, 0], expert[i, 1] = tree_expert(pos[i, 0], pos[i, 1], side[i], radius)
    return cost, done, success


@njit(cache=True)
def goal_step(pos, goal, expert, action, u, reset, dt, radius, tol, start, play, task, speed):
    """One step of n point masses in the arena [-1, 1]^2 that should end within radius of their goal,
    in place. Rows with reset[i] start uniformly in [-start, start]^2 with a goal uniform in the arena;
    in play mode a goal, once reached, is replaced by a new one (the expert wanders). expert (n, 2) holds
    pi*(s) (at most `speed` per axis). Returns costs, 1[||a - pi*(s)|| > tol] or with task=True the task's
    own 1[away from the goal after the step], and success (within radius of the goal)."""
    n = pos.shape[0]
    cost, success = np.zeros(n, np.float32), np.zeros(n, np.bool_)
    for i in range(n):
        if reset[i]:
            pos[i, 0], pos[i, 1] = start * (2 * u[i, 0] - 1), start * (2 * u[i, 1] - 1)
            goal[i, 0], goal[i, 1] = 2 * u[i, 2] - 1, 2 * u[i, 3] - 1
        else:
            ax, ay = min(max(action[i, 0], -1.0), 1.0), min(max(action[i, 1], -1.0), 1.0)
            cost[i] = 1.0 if math.sqrt((ax - expert[i, 0]) ** 2 + (ay - expert[i, 1]) ** 2) > tol else 0.0
            pos[i, 0] = min(max(pos[i, 0] + dt * ax, -1.0), 1.0)
            pos[i, 1] = min(max(pos[i, 1] + dt * ay, -1.0), 1.0)
            if task:  # the task's cost, which can tell a better policy than the expert
                cost[i] = 0.0 if (pos[i, 0] - goal[i, 0]) ** 2 + (pos[i, 1] - goal[i, 1]) ** 2 < radius**2 else 1.0
            if play and (pos[i, 0] - goal[i, 0]) ** 2 + (pos[i, 1] - goal[i, 1]) ** 2 < radius**2:
                goal[i, 0], goal[i, 1] = 2 * u[i, 2] - 1, 2 * u[i, 3] - 1
        success[i] = (pos[i, 0] - goal[i, 0]) ** 2 + (pos[i, 1] - goal[i, 1]) ** 2 < radius**2
    goal_expert(pos, goal, dt, speed, expert)
    return cost, success


@njit(cache=True)
def goal_expert(pos, goal, dt, speed, expert):
    """pi*(s) into expert (n, 2): straight for the goal, at most `speed` per axis (the bounds allow 1)."""
    for i in range(pos.shape[0]):
        for j in range(2):
            expert[i, j] = min(max((goal[i, j] - pos[i, j]) / dt, -speed), speed)


class VectorEnv:
    """Gymnasium's vector-env conventions, without Gymnasium. reset(seed, options) -> (obs, info);
    step(actions) -> (obs, rewards, terminations, truncations, info) with rewards = -cost; num_envs
    sub-environments; truncation after `horizon` steps; next-step autoreset (a row whose episode ended
    restarts on the following step() and ignores that step's action). expert(obs) and unsafe(obs)
    read the true state, not obs: the expert knows what the learner cannot see."""

    action_dim = obs_dim = 0

    def __init__(self, num_envs, horizon, seed):
        self.num_envs, self.horizon = _positive_int("num_envs", num_envs), _positive_int("horizon", horizon)
        self.rng = np.random.default_rng(None if seed is None else _positive_int("seed", seed, 0))
        self.t, self.done = np.zeros(self.num_envs, np.int64), np.ones(self.num_envs, bool)
        self.expert_action = np.zeros((self.num_envs, self.action_dim))  # pi*(s), kept by the kernel

    def expert(self, obs=None):
        return self.expert_action.astype(np.float32)  # (n, A)

    def reset(self, seed=None, options=None):
        if seed is not None:
            self.rng = np.random.default_rng(_positive_int("seed", seed, 0))
        self.t[:] = 0
        self.done[:] = False
        _, _, info = self.advance(np.zeros((self.num_envs, self.action_dim)), np.ones(self.num_envs, bool))
        return self.observe(), info

    def step(self, actions):
        actions = as_float32("actions", actions, (self.num_envs, self.action_dim)).astype(np.float64)
        reset = self.done.copy()  # next-step autoreset
        cost, terminated, info = self.advance(actions, reset)
        self.t = np.where(reset, 0, self.t + 1)
        terminated = terminated & ~reset
        truncated = (self.t >= self.horizon) & ~terminated
        self.done = terminated | truncated
        return self.observe(), -cost, terminated, truncated, info


class Road(VectorEnv):
    """The compounding-error task. Finite states (offset x in -lanes..lanes, turn c) and finite
    observations (x and a noisy reading r of c) so J(pi) can be computed exactly (road_exact_cost).
    The expert never errs; the learner's best guess, a = r, errs with probability eps at every step.
    Moves are -2..2 (actions are rounded and clipped). From any offset the expert is back on the
    road within `lanes` steps; a learner that never saw the roadside may stay off it forever.
    With persist = p > 0 the turn keeps its value with probability p each step: then the previous move
    predicts the next one (the brake light of causal confusion). Episodes start on the road, or with
    start > 0 at an offset uniform in -start..start, so that demonstrations hold recoveries."""

    action_dim = 1

    def __init__(self, num_envs=256, horizon=50, eps=0.01, lanes=3, persist=0.0, start=0, seed=0):
        super().__init__(num_envs, horizon, seed)
        self.eps = _real("eps", eps, 0, 2 / 3, open_high=True)  # the reading must beat a guess
        self.lanes, self.persist = _positive_int("lanes", lanes), _real("persist", persist, 0, 1, open_high=True)
        self.start = _positive_int("start", start, 0)
        if self.start > self.lanes:
            raise ValueError(f"start must be at most lanes = {self.lanes}, got {start}")
        self.table = road_features(self.lanes)  # (n_obs, O)
        self.obs_dim = self.table.shape[1]
        self.x, self.c, self.r = (np.zeros(self.num_envs, np.int64) for _ in range(3))

    def advance(self, actions, reset):
        u = self.rng.random((self.num_envs, 5 if self.persist or self.start else 3))
        args = (actions[:, 0], u, reset, self.eps, self.lanes, self.persist, self.start)
        cost = road_step(self.x, self.c, self.r, self.expert_action, *args)
        return cost, np.zeros(self.num_envs, bool), {}

    def observation_index(self):
        return (self.x + self.lanes) * 3 + self.r + 1  # (n,) in [0, 3 (2 lanes + 1))

    def observe(self):
        return self.table[self.observation_index()]  # (n, O)

    def unsafe(self, obs=None):
        return self.x != 0  # off the road

    def side_cameras(self, obs, labels, k=1):
        """Synthetic recovery data (DAVE-2's side cameras, the drone's left and right cameras): for each
        demonstrated state on the road, the observations the car would see at offsets +-1 .. +-k at the same
        moment, labelled with the expert's correction there, clip(c - x, -2, 2): no rollout, no interaction.
        On the road the expert's label is the turn c. Returns the 2 k N synthetic (obs, labels): expert labels."""
        check_array("obs", obs, (None, self.obs_dim))
        check_array("labels", labels, (len(obs), 1))
        k = _positive_int("k", k)
        if k > self.lanes:
            raise ValueError(f"k must be at most lanes = {self.lanes}, got {k}")
        on_road = ~obs[:, 3:].any(1)  # the thermometer features are all zero on the road
        r, c = obs[on_road, :3].argmax(1) - 1, labels[on_road, 0]  # the reading and the turn
        x = np.repeat([x for x in range(-k, k + 1) if x], len(r))  # (2 k N,) the synthetic offsets
        labels = np.clip(np.tile(c, 2 * k) - x, -2, 2).astype(np.float32)[:, None]  # the expert at (x, c)
        return self.table[(x + self.lanes) * 3 + np.tile(r, 2 * k) + 1], labels


def road_features(lanes):
    """Observation vectors for every (x, r), row (x + lanes) * 3 + r + 1: one-hot reading, then
    thermometer offset features [x >= 1, ..., x >= lanes, x <= -1, ..., x <= -lanes] (all zero on the road)."""
    x = np.repeat(np.arange(-lanes, lanes + 1), 3)[:, None]  # (n_obs, 1)
    r = np.tile(np.arange(-1, 2), 2 * lanes + 1)[:, None]
    k = np.arange(1, lanes + 1)
    return np.concatenate([r == np.arange(-1, 2), x >= k, x <= -k], 1).astype(np.float32)


def road_exact_cost(move_probs, horizon, eps, lanes, persist=0.0, start=0, distribution=False):
    """Exact J(pi) for T = 1..horizon from the reset states (x uniform in -start..start, a uniform turn,
    previous move 0), by propagating the distribution over states (offset x, turn c, previous move m):
    d_{t+1} = d_t P_pi and J_T = sum_{t<T} d_t k_pi, k_pi the expected cost of one step. move_probs: the
    policy's probability of each move -2..2 per observation, (n_obs, 5) with rows as in road_features, or
    (n_obs, 5, 5) indexed [row, previous move + 2, move + 2] for a policy that also sees its previous move.
    distribution=True also returns the offset's distribution at t = 0 .. horizon - 1, (horizon, 2 lanes + 1)."""
    X, horizon = 2 * lanes + 1, _positive_int("horizon", horizon)
    probs = np.repeat(move_probs[:, None], 5, 1) if np.ndim(move_probs) == 2 else move_probs  # m unseen
    check_array("move_probs", probs, (3 * X, 5, 5))
    if np.any(probs < 0) or not np.allclose(probs.sum(2), 1):
        raise ValueError("move_probs rows must be probabilities: non-negative and summing to 1")
    if not (0 <= eps < 2 / 3 and 0 <= persist < 1 and _positive_int("start", start, 0) <= lanes):
        raise ValueError(f"need eps in [0, 2/3), persist in [0, 1) and start <= lanes, got {eps}, {persist}, {start}")
    keep = persist + (1 - persist) / 3  # P(c' = c); each other turn has (1 - keep) / 2
    P, k = np.zeros((X, 3, 5, X, 3, 5)), np.zeros((X, 3, 5))  # P_pi and k_pi over states (x, c, m)
    for x, c, m, r, a in np.ndindex(X, 3, 5, 3, 5):
        x, c, r, a = x - lanes, c - 1, r - 1, a - 2
        w = ((1 - eps) if r == c else eps / 2) * probs[(x + lanes) * 3 + r + 1, m, a + 2]  # P(r | c) pi(a | x, r, m)
        k[x + lanes, c + 1, m] += w * (a != min(max(c - x, -2), 2))
        turn = np.where(np.arange(-1, 2) == c, keep, (1 - keep) / 2)  # P(c' | c)
        P[x + lanes, c + 1, m, min(max(x + a - c, -lanes), lanes) + lanes, :, a + 2] += w * turn
    P, k = P.reshape(15 * X, 15 * X), k.reshape(-1)
    d, per_step, offsets = np.zeros((X, 3, 5)), np.zeros(horizon), np.zeros((horizon, X))
    d[lanes - start : lanes + start + 1, :, 2] = 1 / (3 * (2 * start + 1))
    d = d.reshape(-1)
    for t in range(horizon):
        per_step[t], offsets[t] = d @ k, d.reshape(X, 15).sum(1)
        d = d @ P
    return (per_step.cumsum(), offsets) if distribution else per_step.cumsum()  # J for T = 1..horizon


def road_move_probs(actions):
    """(n_obs, 1) deterministic actions, or (samples, n_obs, 1) sampled ones -> (n_obs, 5) move frequencies."""
    moves = np.clip(np.floor(np.asarray(actions, np.float64)[..., 0] + 0.5), -2, 2).astype(np.int64) + 2
    onehot = np.eye(5)[moves]
    return onehot if onehot.ndim == 2 else onehot.mean(0)


class Tree(VectorEnv):
    """The multimodal task: a point mass starts below a round tree and must reach y >= 1 without
    touching it. The expert passes left or right with equal probability (a hidden per-episode side),
    so demonstrations are bimodal before the tree and their average drives into it. Actions: velocity
    in [-1, 1]^2, dt = 0.1. Cost 1[||a - pi*(s)|| > 0.1]; success: reaching the far side untouched.
    With cue=True the side is shown once, as a third observation (+-1) on an episode's first step and 0
    after it, and success also needs the cued side: the expert is non-Markovian in what the learner sees.
    corridor = L starts episodes L steps further down, a straight run before the expert's swerve: the cue must then
    be remembered for L steps (raise the horizon by L too). A smaller dt takes smaller steps (give a horizon of
    about 3 / dt). grid = g > 0 is a coarse sensor: the position is observed rounded to cells of size g (the cue
    stays exact), so a move smaller than a cell does not show at all; the expert still acts on the true position."""

    action_dim = 2
    radius, goal_y, tol, start = 0.3, 1.0, 0.1, 0.1

    def __init__(self, num_envs=256, horizon=40, cue=False, corridor=0, dt=0.1, grid=0.0, seed=0):
        super().__init__(num_envs, horizon, seed)
        self.pos, self.side, self.cue = np.zeros((self.num_envs, 2)), np.ones(self.num_envs), bool(cue)
        self.corridor = _positive_int("corridor", corridor, 0)
        self.dt, self.grid = _real("dt", dt, 0, 0.1, open_low=True), _real("grid", grid, 0)
        self.obs_dim = 2 + self.cue

    def advance(self, actions, reset):
        u = self.rng.random((self.num_envs, 2))
        args = (self.radius, self.goal_y, self.dt, self.tol, self.start, self.corridor)
        cost, done, success = tree_step(self.pos, self.side, self.expert_action, actions, u, reset, *args)
        if self.cue:  # passed on the cued side
            success &= np.sign(self.pos[:, 0]) == self.side
        return cost, done, {"success": success}

    def observe(self):
        pos = np.round(self.pos / self.grid) * self.grid if self.grid else self.pos  # the centre cell: |x| < g / 2
        cue = self.side[:, None] * (self.t[:, None] == 0)  # the side, on an episode's first step only
        return np.concatenate([pos, cue], 1).astype(np.float32) if self.cue else pos.astype(np.float32)

    def unsafe(self, obs=None):
        return np.hypot(*self.pos.T) < self.radius + 0.1  # close to the tree


class Goals(VectorEnv):
    """The goal-reaching task: a point mass in [-1, 1]^2 should end within 0.1 of a goal anywhere in the
    arena; the observation is the position (2) and info["goal"] the goal. Actions: velocity in [-1, 1]^2,
    dt = 0.1. With play=True the expert wanders from random goal to random goal: data for hindsight relabeling.
    reset(options={"goals": (n, 2)}) sets the goals; start sets the half-width of the start square;
    observe_goal=True makes the observation [position, goal] (4), for goal-conditioned policies. For RL,
    cost="task" replaces the imitation cost by 1[away from the goal] per step, and speed < 1 makes the
    expert deliberately slow (it moves at most `speed` per axis and step, the bounds allow 1)."""

    action_dim = 2
    dt, radius, tol = 0.1, 0.1, 0.1

    def __init__(
        self, num_envs=256, horizon=30, play=False, start=0.5, observe_goal=False, cost="expert", speed=1.0, seed=0
    ):
        super().__init__(num_envs, horizon, seed)
        start, speed = _real("start", start, 0, 1), _real("speed", speed, 0, 1, open_low=True)
        if cost not in ("expert", "task"):
            raise ValueError(f"need cost 'expert' or 'task', got {cost!r}")
        self.task, self.speed = cost == "task", speed
        self.play, self.start, self.observe_goal = bool(play), start, bool(observe_goal)
        self.pos, self.goal, self.obs_dim = (
            np.zeros((self.num_envs, 2)),
            np.zeros((self.num_envs, 2)),
            2 + 2 * self.observe_goal,
        )

    def reset(self, seed=None, options=None):
        _, info = super().reset(seed)
        if options and "goals" in options:
            self.goal[:] = check_array("options['goals']", np.asarray(options["goals"], np.float64), (self.num_envs, 2))
            goal_expert(self.pos, self.goal, self.dt, self.speed, self.expert_action)
        return self.observe(), {**info, "goal": self.goal.astype(np.float32)}

    def advance(self, actions, reset):
        u = self.rng.random((self.num_envs, 4))
        args = (self.dt, self.radius, self.tol, self.start, self.play, self.task, self.speed)
        cost, success = goal_step(self.pos, self.goal, self.expert_action, actions, u, reset, *args)
        return cost, np.zeros(self.num_envs, bool), {"success": success, "goal": self.goal.astype(np.float32)}

    def observe(self):
        return (np.concatenate([self.pos, self.goal], 1) if self.observe_goal else self.pos).astype(np.float32)


@njit(cache=True)
def camera_render(pos, angle, scale, offset, blob, out):
    """n grayscale frames (n, S, S) of positions pos (n, 2) in the arena, in place: the view is rotated by angle,
    `scale` pixels per unit, the arena's centre at pixel offset (row, column); the agent is a Gaussian blob of
    width `blob` pixels over a fixed background texture. A frame is not a linear function of the position."""
    c, s, S = math.cos(angle), math.sin(angle), out.shape[1]
    background = np.empty((S, S))
    for r in range(S):
        for q in range(S):
            background[r, q] = 0.3 + 0.15 * math.sin(0.9 * r + 0.5 * q) + 0.2 * q / S  # stripes on a gradient
    for i in range(pos.shape[0]):
        u = offset[0] + scale * (c * pos[i, 0] - s * pos[i, 1])  # the agent's row, in pixels
        v = offset[1] + scale * (s * pos[i, 0] + c * pos[i, 1])  # its column
        for r in range(S):
            for q in range(S):
                out[i, r, q] = background[r, q] + math.exp(-((r - u) ** 2 + (q - v) ** 2) / (2 * blob**2))
    return out


@dataclass(frozen=True)
class Camera:
    """A third-person view of the goal arena, from another viewpoint than the learner's own (its position).
    It films positions, so a rollout filmed by it is a second view synchronised in time with the first."""

    size: int = 16  # pixels per side
    angle: float = 0.6  # the view's rotation, radians
    scale: float = 4.5  # pixels per unit of the arena (it spans 9 pixels before rotation)
    offset: tuple = (7.0, 8.0)  # the pixel (row, column) the arena's centre lands on
    blob: float = 1.5  # the agent's width, pixels

    def __post_init__(self):
        _positive_int("size", self.size, 2)
        _real("angle", self.angle)
        _real("scale", self.scale, 0, open_low=True)
        _real("blob", self.blob, 0, open_low=True)
        if len(self.offset) != 2:
            raise ValueError(f"offset must be a (row, column) pair, got {self.offset!r}")

    def film(self, positions):
        """positions (..., 2) -> frames (..., S S) float32, one per position."""
        p = np.asarray(positions, np.float64)
        out = np.empty((p[..., 0].size, self.size, self.size))
        camera_render(p.reshape(-1, 2), self.angle, self.scale, np.asarray(self.offset, np.float64), self.blob, out)
        return out.reshape(*p.shape[:-1], self.size**2).astype(np.float32)


@njit(cache=True)
def pendulum_expert(th, th_dot):
    """A swing-up: energy pumping far from the top, a linear controller near it. With th'' = 15 sin th + 3 u
    (Pendulum-v1), E = th_dot^2 / 2 - 15 (1 - cos th) is 0 upright at rest and dE/dt = 3 u th_dot, so u = -E th_dot
    (clipped) drives E to 0; within 1 rad of the top, u = -(20 th + 5 th_dot), about the LQR gain for its cost."""
    a = (th + math.pi) % (2 * math.pi) - math.pi  # the angle from the top, in [-pi, pi)
    E = 0.5 * th_dot * th_dot - 15.0 * (1.0 - math.cos(th))
    u = -(20.0 * a + 5.0 * th_dot) if abs(a) < 1.0 else -E * th_dot
    return min(max(u, -2.0), 2.0)


@njit(cache=True)
def pendulum_step(th, th_dot, expert, action, u, reset, g, m, l, dt, max_speed, max_torque):
    """One step of n pendulums (Gymnasium's Pendulum-v1), in place. th = 0 is upright. Rows with reset[i] start
    at th uniform in [-pi, pi], th_dot uniform in [-1, 1] (u (n, 2)). expert (n, 1) holds pi*(s). Returns the
    costs angle_normalize(th)^2 + 0.1 th_dot^2 + 0.001 u^2, of the state before the step, as Gymnasium's."""
    cost = np.zeros(th.size, np.float32)
    for i in range(th.size):
        if reset[i]:
            th[i], th_dot[i] = math.pi * (2 * u[i, 0] - 1), 2 * u[i, 1] - 1
        else:
            a = min(max(action[i, 0], -max_torque), max_torque)
            angle = (th[i] + math.pi) % (2 * math.pi) - math.pi  # angle_normalize(th)
            cost[i] = angle * angle + 0.1 * th_dot[i] * th_dot[i] + 0.001 * a * a
            # th_dot' = clip(th_dot + (3 g / (2 l) sin th + 3 / (m l^2) u) dt, -8, 8); th' = th + th_dot' dt
            th_dot[i] += (3 * g / (2 * l) * math.sin(th[i]) + 3 / (m * l * l) * a) * dt
            th_dot[i] = min(max(th_dot[i], -max_speed), max_speed)
            th[i] += th_dot[i] * dt
        expert[i, 0] = pendulum_expert(th[i], th_dot[i])
    return cost


class Pendulum(VectorEnv):
    """Gymnasium's Pendulum-v1 without Gymnasium: swing a pendulum up from a random start and hold it upright.
    Observation (cos th, sin th, th_dot), action a torque in [-2, 2], 200 steps, same dynamics and cost. The
    expert (pendulum_expert) scores about -150 on average over random starts. A continuous control task on
    which every head should be able to match the expert."""

    action_dim, obs_dim = 1, 3
    g, m, l, dt, max_speed, max_torque = 10.0, 1.0, 1.0, 0.05, 8.0, 2.0

    def __init__(self, num_envs=256, horizon=200, seed=0):
        super().__init__(num_envs, horizon, seed)
        self.th, self.th_dot = np.zeros(self.num_envs), np.zeros(self.num_envs)

    def advance(self, actions, reset):
        u = self.rng.random((self.num_envs, 2))
        args = (self.g, self.m, self.l, self.dt, self.max_speed, self.max_torque)
        cost = pendulum_step(self.th, self.th_dot, self.expert_action, actions, u, reset, *args)
        return cost, np.zeros(self.num_envs, bool), {}

    def observe(self):
        return np.stack([np.cos(self.th), np.sin(self.th), self.th_dot], 1).astype(np.float32)  # (n, 3)


# ---- data ----

TRAJECTORY_FIELDS = {  # name: (dtype, shape in terms of n, T, O, A, G; required)
    "observations": (np.float32, "n T+1 O", True),
    "actions": (np.float32, "n T A", False),  # None: state-only demonstrations (a video, motion capture)
    "costs": (np.float32, "n T", False),
    "mask": (np.bool_, "n T", True),
    "labels": (np.float32, "n T A", False),
    "intervened": (np.bool_, "n T", False),
    "goals": (np.float32, "n G", False),
    "success": (np.bool_, "n", False),
    "terminal": (np.bool_, "n", False),
}


@dataclass(frozen=True)
class Trajectories:
    """n recorded episodes of up to T steps, one per row; steps after a row's episode ended are masked out."""

    observations: np.ndarray  # (n, T+1, O) float32: s_0 .. s_T (a row's last real one is repeated after it ends)
    actions: np.ndarray  # (n, T, A) float32: the executed actions, or None (states only)
    costs: np.ndarray  # (n, T) float32: c(s_t, a_t), or None
    mask: np.ndarray  # (n, T) bool: step t is a real transition of the row's episode
    labels: np.ndarray = None  # (n, T, A) float32: the expert's action at each visited state
    intervened: np.ndarray = None  # (n, T) bool: the expert was in control (HG-DAgger, DAgger's mixture)
    goals: np.ndarray = None  # (n, G) float32: the goal each episode was given
    success: np.ndarray = None  # (n,) bool: the episode ended in success
    terminal: np.ndarray = None  # (n,) bool: the episode terminated within the window (not truncated)

    def __post_init__(self):
        o = self.observations
        check_array("observations", o, (None, None, None), np.float32)
        n, T, O = o.shape[0], o.shape[1] - 1, o.shape[2]
        if T < 1:
            raise ValueError(f"observations must hold T+1 >= 2 steps per row, got {o.shape[1]}")
        sizes = {"n": n, "T": T, "T+1": T + 1, "O": O, "A": None, "G": None}
        for name, (dtype, dims, required) in TRAJECTORY_FIELDS.items():
            value = getattr(self, name)
            if value is None:
                if required:
                    raise ValueError(f"{name} is required")
                continue
            check_array(name, value, tuple(sizes[d] for d in dims.split()), dtype)
            if "A" in dims:  # actions and labels share A
                sizes["A"] = value.shape[2]

    @property
    def obs_dim(self):
        return self.observations.shape[2]

    @property
    def total_cost(self):
        return (self.costs * self.mask).sum(1)  # (n,)

    def pairs(self, labels=True, where=None):
        """Flatten to (observation, action) pairs over the real steps (and where `where` (n, T) holds):
        the expert's labels by default, the executed actions with labels=False."""
        if labels and self.labels is None:
            raise ValueError("these trajectories hold no expert labels; use labels=False for the executed actions")
        if not labels and self.actions is None:
            raise ValueError("these trajectories are states only: they hold no actions")
        m = self.mask if where is None else self.mask & where
        return self.observations[:, :-1][m], (self.labels if labels else self.actions)[m]

    def chunks(self, k, labels=True):
        """Action chunks (ACT, Diffusion Policy): (s_t, [a_t, ..., a_{t+k-1}]) over the real steps, the target
        (k A,) oldest first. A chunk never leaves its row's episode: past the episode's last real step it repeats
        that step's label (as Diffusion Policy's sampler pads), so every real step keeps its example, the states
        near an episode's end included, where a receding-horizon actor still asks. k = 1 gives pairs()."""
        obs, _ = self.pairs(labels)
        a, k = self.labels if labels else self.actions, _positive_int("k", k)  # (n, T, A)
        (n, T, A), last = a.shape, self.mask.sum(1) - 1  # a row's real steps come first
        t = np.minimum(np.arange(T)[:, None] + np.arange(k), last[:, None, None])  # (n, T, k): t + j, clamped
        return obs, a[np.arange(n)[:, None, None], t][self.mask].reshape(-1, k * A)  # (B, O), (B, k A)

    def transitions(self):
        """(s, a, s') over the real steps: what an inverse dynamics model learns from."""
        return self.observations[:, :-1][self.mask], self.actions[self.mask], self.observations[:, 1:][self.mask]

    def states_only(self):
        """The same episodes without their actions or labels: what a video of the demonstrations would give."""
        return replace(self, actions=None, labels=None)

    def save(self, path):
        """Write a .npz through a temporary file (save_npz); returns the path written."""
        return save_npz(path, **{k: getattr(self, k) for k in TRAJECTORY_FIELDS if getattr(self, k) is not None})

    @classmethod
    def load(cls, path):
        """Load a .npz written by save, without pickles, checking shapes, dtypes and finiteness. Any failure to read
        it is a ValueError that names the file (a missing file stays a FileNotFoundError)."""

        def read(z):
            unknown = set(z.files) - set(TRAJECTORY_FIELDS)
            missing = {k for k, (_, _, required) in TRAJECTORY_FIELDS.items() if required} - set(z.files)
            if unknown or missing:
                raise ValueError(f"unknown fields {sorted(unknown)}, missing fields {sorted(missing)}")
            return cls(**{k: z[k] if k in z.files else None for k in TRAJECTORY_FIELDS})

        return load_npz(path, read, "trajectory")

    @classmethod
    def from_episodes(cls, episodes):
        """Episodes of any lengths, as users keep them (Minari's EpisodeData, or dicts of arrays):
        each with observations (T_i + 1, O) and actions (T_i, A) or (T_i,), optionally rewards (T_i,) (costs =
        -rewards) and terminations (T_i,) (terminal: the last one), read as attributes or as keys. Rows are padded
        to the longest episode: the last observation repeats and the mask marks the real steps."""
        if isinstance(episodes, (dict, str)) or not hasattr(episodes, "__iter__"):
            raise TypeError(f"episodes must be a list (or an iterable) of episodes, got {type(episodes).__name__}")
        rows = []
        for i, ep in enumerate(episodes):
            get = ep.get if isinstance(ep, dict) else lambda key, ep=ep: getattr(ep, key, None)
            o = as_float32(f"episodes[{i}].observations", get("observations"), (None, None))
            if len(o) < 2 or get("actions") is None:
                raise ValueError(f"episodes[{i}] needs observations (T + 1, O) with T >= 1 and actions (T, A)")
            shapes = {"actions": (len(o) - 1, None), "rewards": (len(o) - 1,), "terminations": (len(o) - 1,)}
            fields = {
                k: as_float32(f"episodes[{i}].{k}", get(k), shape) for k, shape in shapes.items() if get(k) is not None
            }
            rows.append({"observations": o, **fields})
        if not rows:
            raise ValueError("episodes is empty: need at least one episode")
        for key in ("observations", "actions", "rewards", "terminations"):
            if len({r[key].shape[1:] if key in r else None for r in rows}) > 1:
                raise ValueError(f"every episode must have {key} of one width (or none have rewards/terminations)")
        length = np.array([len(r["actions"]) for r in rows])
        mask = np.arange(length.max()) < length[:, None]  # (n, T): each row's real steps come first

        def pad(key, repeat=False):  # (n, T, ...) with zeros after each episode, or (n, T + 1, ...) repeating its last
            out = np.zeros((len(rows), mask.shape[1] + repeat, *rows[0][key].shape[1:]), np.float32)
            for i, r in enumerate(rows):
                out[i, : len(r[key])] = r[key]
                if repeat:
                    out[i, len(r[key]) :] = r[key][-1]
            return out

        costs = -pad("rewards") if "rewards" in rows[0] else None
        terminal = np.array([r["terminations"][-1] != 0 for r in rows]) if "terminations" in rows[0] else None
        return cls(pad("observations", True), pad("actions"), costs, mask, terminal=terminal)


def env_actions(env):
    """How the (n, A) float32 actions of policies and experts become what env.step takes, read off a Gymnasium
    env's single_action_space by duck typing (imitate does not import Gymnasium): Discrete (.n) takes (n,) int64
    indices, so policies give (n, 1) index values; MultiDiscrete (.nvec) takes (n, k) int64; Box (.low, .high)
    takes (n, A) in its dtype, within its bounds. Envs without a space (the toy world) take the floats as they are."""
    space = getattr(env, "single_action_space", None)
    if hasattr(space, "nvec"):  # MultiDiscrete
        low = np.asarray(getattr(space, "start", 0))
        return lambda a: np.clip(np.rint(a), low, low + np.asarray(space.nvec) - 1).astype(np.int64)
    if hasattr(space, "n") and getattr(space, "shape", None) == ():  # Discrete
        low, high = int(getattr(space, "start", 0)), int(getattr(space, "start", 0)) + int(space.n) - 1
        return lambda a: np.clip(np.rint(check_array("actions", a, (None, 1))[:, 0]), low, high).astype(np.int64)
    if hasattr(space, "low") and hasattr(space, "high"):  # Box
        return lambda a: np.clip(a.reshape(len(a), *space.shape), space.low, space.high).astype(space.dtype)
    return lambda a: a


def env_observations(obs, env, where="env.step"):
    """The env's observations as float32 (n, O), or a ValueError for what a policy cannot take as it is."""
    try:
        obs = np.asarray(obs)
    except ValueError:  # ragged per-env observations
        obs = np.asarray(None)
    obs = obs[:, None] if obs.ndim == 1 else obs  # (n,): one number each, e.g. a Discrete observation space
    flat = obs.ndim == 2 and obs.dtype.kind in "biuf"
    if not flat or hasattr(getattr(env, "single_observation_space", None), "spaces"):
        raise ValueError(
            f"{where} must return one flat numeric observation per environment, (num_envs, O); got {obs.dtype} "
            f"{obs.shape}. Flatten Dict, Tuple or image observations first, e.g. with Gymnasium's FlattenObservation"
        )
    return as_float32(f"{where}'s observations", obs)


def env_reset(env, seed=None, options=None):
    """env.reset(seed=..., options=...) -> (obs (n, O) float32, info dict), checked where it enters."""
    if not (callable(getattr(env, "reset", None)) and callable(getattr(env, "step", None))):
        raise TypeError(f"env must be a vector env with reset() and step(), got {type(env).__name__}")
    out = env.reset(seed=seed, options=options)
    if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], (dict, type(None)))):
        raise ValueError("env.reset must return (observations, info), as Gymnasium's vector envs do")
    mode = str(getattr(getattr(env, "metadata", {}).get("autoreset_mode"), "value", "NextStep"))
    if mode not in ("NextStep", "SameStep"):  # Gymnasium 1.x: AutoresetMode.DISABLED leaves resets to the caller
        raise ValueError(f"env's autoreset mode {mode!r} is not supported: make the env with NEXT_STEP or SAME_STEP")
    return env_observations(out[0], env, "env.reset"), out[1] or {}


def env_step(env, actions):
    """env.step(actions) -> (obs (n, O) float32, rewards (n,) float32, terminated (n,), truncated (n,), info),
    checked where it enters, and with `last` (n, O) and `ended` (n,) in info: the observation each row's episode
    ended on and which rows ended AND restarted in this very step. Under next-step autoreset (the toy world,
    Gymnasium 1.x by default) obs itself is the last one and the next step() restarts the row; under same-step
    autoreset (Gymnasium 1.x on request, every 0.29 vector env) obs already starts the next episode and Gymnasium
    keeps the real last one in info["final_obs"] (0.29: "final_observation"), with the rows in "_final_obs"."""
    n = len(actions)
    out = env.step(actions)
    if not (isinstance(out, tuple) and len(out) == 5 and isinstance(out[4], (dict, type(None)))):
        raise ValueError("env.step must return (observations, rewards, terminations, truncations, info)")
    obs, reward = env_observations(out[0], env), as_float32("env.step's rewards", out[1], (n,))
    done = [np.asarray(x) for x in out[2:4]]
    for name, x in zip(("terminations", "truncations"), done):
        if x.shape != (n,) or x.dtype.kind not in "biu":
            raise ValueError(f"env.step's {name} must be (num_envs,) booleans, got {x.dtype} {x.shape}")
    info, last, ended = dict(out[4] or {}), obs.copy(), np.zeros(n, bool)
    for key in ("final_obs", "final_observation"):
        if "_" + key in info:  # same-step autoreset: these rows' real last observations
            ended = np.asarray(info["_" + key], bool).reshape(n)
            for i in np.flatnonzero(ended):
                last[i] = env_observations(np.asarray(info[key][i])[None], env, f"info['{key}']")[0]
            break
    final = info.get("final_info")  # the ended rows' own info (1.x: a dict of arrays; 0.29: a dict per row)
    if ended.any() and final is not None:  # their "success" is the ended episode's, not the new one's
        if isinstance(final, dict):
            rows = np.asarray(final.get("_success", np.zeros(n, bool)), bool) & ended
            success = np.where(rows, np.asarray(final.get("success", np.zeros(n)), bool), False)
        else:
            rows = np.array([ended[i] and isinstance(d, dict) and "success" in d for i, d in enumerate(final)])
            success = np.array([bool(d["success"]) if r else False for d, r in zip(final, rows)])
        if rows.any():
            info["success"] = np.where(rows, success, np.asarray(info.get("success", np.zeros(n)), bool))
    return obs, reward, done[0].astype(bool), done[1].astype(bool), info | {"last": last, "ended": ended}


class History:
    """Any vector env (the toy world's or Gymnasium's) seen through its last k observations and, with
    action_dim > 0, the k actions executed before them: [o_{t-k+1} .. o_t, a_{t-k} .. a_{t-1}], oldest first.
    Zeros stand before an episode's first step, and a row's history is cleared when its new episode starts
    (the step after it ended under next-step autoreset, the same step under same-step autoreset, where the
    ended episode's last window goes to info["last"]), so nothing crosses an episode boundary. Everything else
    (expert, unsafe, horizon, spaces) is the wrapped env's; the toy world's experts read the true state."""

    def __init__(self, env, k, action_dim=0):
        self.env, self.k, self.action_dim = env, _positive_int("k", k), _positive_int("action_dim", action_dim, 0)
        self.obs = None

    def __getattr__(self, name):  # everything but the wrapper's own state is the wrapped env's
        if name == "env" or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.env, name)

    def reset(self, seed=None, options=None):
        obs, info = env_reset(self.env, seed, options)
        n = len(obs)
        self.obs = np.zeros((n, self.k, obs.shape[1]), np.float32)
        self.acts = np.zeros((n, self.k, self.action_dim), np.float32)
        self.new = np.ones(n, bool)  # rows whose next observation starts an episode
        return self.push(obs, np.zeros((n, self.action_dim), np.float32)), info

    def step(self, actions):
        if self.obs is None:
            raise ValueError("History: call reset() before step()")
        obs, reward, terminated, truncated, info = env_step(self.env, actions)
        a = as_float32("actions", actions, (len(obs), None))
        if a.shape[1] < self.action_dim:
            raise ValueError(f"History's action_dim = {self.action_dim} exceeds the env's {a.shape[1]} action columns")
        a = a[:, : self.action_dim]
        last, ended = self.push(info["last"], a), info["ended"]  # where an episode ended: its last window
        self.obs[ended], self.acts[ended] = 0, 0  # same-step autoreset: obs already starts the next episode
        self.obs[ended, -1] = obs[ended]
        self.new = (terminated | truncated) & ~ended  # next-step autoreset: the next observation starts anew
        info |= {"final_obs": last, "_final_obs": ended} if ended.any() else {}
        return self.window(), reward, terminated, truncated, info

    def push(self, obs, actions):
        """Shift every row's window by one step, appending obs and the action before it; rows in self.new start
        afresh (zeros before obs, and no action: the env ignored it under next-step autoreset)."""
        keep = ~self.new[:, None, None]
        self.obs = np.concatenate([self.obs[:, 1:] * keep, obs[:, None]], 1)
        self.acts = np.concatenate([self.acts[:, 1:] * keep, actions[:, None] * keep], 1)
        self.new[:] = False
        return self.window()

    def window(self):
        n = len(self.obs)
        return np.concatenate([self.obs.reshape(n, -1), self.acts.reshape(n, -1)], 1)

    @property
    def obs_dim(self):
        space = getattr(self.env, "single_observation_space", None)
        O = getattr(self.env, "obs_dim", None) or getattr(space, "shape", None)
        O = 1 if O == () else O  # a Discrete observation: one number
        if not O:
            raise ValueError("History needs env.obs_dim or env.single_observation_space to know the width of a frame")
        return self.k * ((O if isinstance(O, int) else math.prod(O)) + self.action_dim)


class ChunkedActor:
    """A chunk policy as rollout's actor (ACT, Zhao et al. 2023; Diffusion Policy, Chi et al. 2023). act(obs) ->
    (r, k A) predicts a_t .. a_{t+k-1} (a policy trained on Trajectories.chunks(k)), for any r rows. Per
    sub-environment the actor keeps what was predicted and executes it in one of two ways:
      mode="receding"  the first m of each chunk, then a new prediction (m = k: whole chunks, open loop); act sees
                       only the rows that need one
      mode="ensemble"  ACT's temporal ensembling: a new chunk every step, and the action at t averages the chunks
                       that cover t, a_t = sum_i w_i a_t^(i) / sum_i w_i, w_i = exp(-m i), i = 0 the oldest
    rollout calls reset(rows) where episodes begin, and those rows forget their chunks. With k = 1 (and m = 1 when
    receding) it acts exactly as act does."""

    def __init__(self, act, k, m, mode="receding"):
        self.act, self.k, self.mode = _callable("act", act), _positive_int("k", k), mode
        if mode == "receding":
            self.m = _positive_int("m", m)
            if m > self.k:
                raise ValueError(f"receding horizon: m must be at most k = {self.k}, got {m}")
        elif mode == "ensemble":
            self.m = _real("m", m, 0)  # w_i = exp(-m i)
        else:
            raise ValueError(f"mode must be 'receding' or 'ensemble', got {mode!r}")
        self.past, self.left, self.seen = None, None, None

    def reset(self, rows):
        """Forget the chunks of rows (n,) bool: their next observation starts an episode."""
        if self.left is None or len(self.left) != len(rows):
            self.past, self.left, self.seen = None, np.zeros(len(rows), np.int64), np.zeros(len(rows), np.int64)
        self.left[rows] = 0  # receding: nothing left to execute, so the next step predicts
        self.seen[rows] = 0  # ensemble: no earlier chunk covers the next step

    def predict(self, obs, rows):
        """Chunks for obs[rows], (r, k, A), made room for in past: (n, k, k, A) ensembled, (n, 1, k, A) receding."""
        chunk = np.asarray(self.act(obs[rows]))
        if chunk.ndim != 2 or len(chunk) != rows.sum() or chunk.shape[1] % self.k:
            raise ValueError(f"act(obs) must return chunks of shape (rows, k A) with k = {self.k}, got {chunk.shape}")
        chunk = chunk.reshape(len(chunk), self.k, -1)
        shape = (len(obs), self.k if self.mode == "ensemble" else 1, self.k, chunk.shape[2])
        if self.past is None or self.past.shape != shape:
            self.past = np.zeros(shape, chunk.dtype)
        return chunk

    def __call__(self, obs):
        n = len(obs)
        if self.left is None or len(self.left) != n:
            self.reset(np.ones(n, bool))
        if self.mode == "receding":
            new = self.left == 0  # the chunk is used up, or the episode has just begun
            if new.any():
                self.past[new, 0] = self.predict(obs, new)
                self.left[new] = self.m
            a = self.past[np.arange(n), 0, self.m - self.left]  # (n, A): each row's next action of its chunk
            self.left -= 1
            return a
        chunk = self.predict(obs, np.ones(n, bool))
        self.past = np.roll(self.past, 1, axis=1)  # past[:, j]: the chunk predicted j steps ago
        self.past[:, 0] = chunk
        self.seen = np.minimum(self.seen + 1, self.k)
        j = np.arange(self.k)
        w = np.where(j < self.seen[:, None], np.exp(-self.m * (self.seen[:, None] - 1 - j)), 0)  # (n, k): i = seen-1-j
        a = self.past[:, j, j]  # (n, k, A): what the chunk from j steps ago predicted for this step
        return ((w[:, :, None] * a).sum(1) / w.sum(1, keepdims=True)).astype(a.dtype)  # sum_i w_i a^(i) / sum_i w_i


def rollout(env, policy, T, rng, *, expert=None, beta=0.0, gate=None, handback=2, noise=0.0, seed=None, options=None):
    """Run T steps of every sub-environment of a vector env and record one episode per row.

    Who acts at each step (each line is marked where it happens below):
      policy(obs) -> actions        the learner, by default
      expert(obs), prob. beta       DAgger's per-step mixture beta pi* + (1 - beta) pi_hat (beta = 1: demos)
      expert while the gate holds   HG-DAgger: control passes to the expert when gate(obs) (n,) flags a
                                    row unsafe and back on the row's `handback`-th consecutive safe step
      + N(0, noise^2)               DART: the executed action is perturbed; the label stays the intended one
    With an expert, every visited state is labeled. A row stops recording when its episode ends, so no
    transition crosses an episode boundary. A stateful policy (action chunks, a recurrent policy) may have
    reset(rows): it is called with the rows whose observation starts a new episode before each call."""
    rng = _generator(rng)
    beta, noise = _real("beta", beta, 0, 1), _real("noise", noise, 0, 1e6)  # a std; 1e39 would overflow float32
    if policy is None and (expert is None or beta < 1):
        raise ValueError("without a policy the expert must act: give expert and beta=1")
    if (beta > 0 or gate is not None) and expert is None:
        raise ValueError("beta > 0 and gate need an expert")
    T, handback = _positive_int("T", T), _positive_int("handback", handback)
    policy, expert, gate = (
        _callable(name, f, True) for name, f in (("policy", policy), ("expert", expert), ("gate", gate))
    )
    obs, info = env_reset(env, seed, options)
    to_env, goals, n = env_actions(env), info.get("goal"), len(obs)
    observations = np.zeros((n, T + 1, obs.shape[1]), np.float32)
    observations[:, 0] = obs
    actions, labels = None, None
    costs, mask = np.zeros((n, T), np.float32), np.zeros((n, T), bool)
    intervened, success, terminal = np.zeros((n, T), bool), np.zeros(n, bool), np.zeros(n, bool)
    alive, in_control, safe_steps = np.ones(n, bool), np.zeros(n, bool), np.zeros(n, np.int64)
    new, pending = np.ones(n, bool), np.zeros(n, bool)  # rows starting an episode now / at the next step
    reported = False  # whether the env reports success
    for t in range(T):
        if hasattr(policy, "reset") and new.any():
            policy.reset(new)
        # the expert's label: any callable of obs; the toy world's env.expert ignores obs and reads the true state
        label = None if expert is None else as_float32("expert(obs)", expert(obs), (n, None))
        a = label if policy is None else as_float32("policy(obs)", policy(obs), (n, None))
        if label is not None and label.shape != a.shape:
            raise ValueError(f"policy(obs) {a.shape} and expert(obs) {label.shape} must have one shape")
        takeover = rng.random(n) < beta if beta > 0 else np.zeros(n, bool)  # DAgger: the expert acts w.p. beta
        if gate is not None:  # HG-DAgger: the expert takes over while the row is unsafe, with hysteresis
            unsafe = check_array("gate(obs)", np.asarray(gate(obs)), (n,)).astype(bool)
            safe_steps = np.where(unsafe, 0, safe_steps + 1)
            in_control = np.where(in_control, safe_steps < handback, unsafe)
            takeover |= in_control
        if label is not None:
            a = np.where(takeover[:, None], label, a)
        if noise > 0:  # DART: the expert's hand shakes; its label does not
            a = a + np.float32(noise) * rng.standard_normal(a.shape, dtype=np.float32)
        if actions is None:
            actions = np.zeros((n, T, a.shape[1]), np.float32)
            labels = None if label is None else np.zeros((n, T, a.shape[1]), np.float32)
        executed = to_env(a)
        obs, reward, terminated, truncated, info = env_step(env, executed)
        actions[:, t], costs[:, t], mask[:, t] = executed.reshape(n, -1), -reward, alive
        intervened[:, t] = takeover & alive
        if labels is not None:
            labels[:, t] = label
        if "success" in info:  # an env may report it only on the steps where some row ends
            success, reported = np.where(alive, info["success"], success), True
        observations[:, t + 1] = info["last"]
        observations[~alive, t + 1] = observations[~alive, t]  # a row whose episode has ended keeps its last one
        terminal |= alive & terminated
        alive &= ~(terminated | truncated)
        new, pending = info["ended"] | pending, (terminated | truncated) & ~info["ended"]
        if not alive.any():
            observations[:, t + 2 :] = observations[:, t + 1 : t + 2]
            break
    return Trajectories(
        observations=observations,
        actions=actions,
        costs=costs * mask,
        mask=mask,
        labels=labels,
        intervened=intervened if (beta > 0 or gate is not None) else None,
        goals=None if goals is None else as_float32("info['goal']", goals, (n, None)),
        success=success if reported else None,
        terminal=terminal,
    )


# ---- algorithms ----


@dataclass(frozen=True)
class DaggerConfig:
    """Interactive imitation (DAgger, HG-DAgger) and noisy demonstrations (DART)."""

    rounds: int = 5  # data-collection rounds, each followed by retraining
    horizon: int = 50  # steps per rollout; each rollout runs every sub-environment of the env
    beta: str = "first"  # DAgger's mixing: "first" 1[i = 1], "exponential" p^(i-1), "linear" 1 - (i-1)/rounds
    p: float = 0.5  # base of the exponential schedule
    warm_start: bool = True  # retrain from the current parameters (False: from a fresh init each round)
    stochastic: bool = False  # the learner samples its actions (True) or takes its deterministic action
    handback: int = 2  # HG-DAgger: consecutive safe steps before the expert hands control back
    tol: float = 0.1  # an action disagrees with the expert's label when ||a - label|| > tol
    val_seed: int = 12345  # validation rollouts use this seed every round: common random numbers
    train: TrainConfig = TrainConfig()

    def __post_init__(self):
        _positive_int("rounds", self.rounds)
        _positive_int("horizon", self.horizon)
        _positive_int("handback", self.handback)
        if self.beta not in ("first", "exponential", "linear"):
            raise ValueError(f"beta must be 'first', 'exponential' or 'linear', got {self.beta!r}")
        _real("p", self.p, 0, 1)
        _real("tol", self.tol, 0)
        _positive_int("val_seed", self.val_seed, 0)
        _config("train", self.train, TrainConfig)


def beta_schedule(kind, rounds, p=0.5):
    """beta_i for rounds i = 1..rounds: the probability that the expert acts at a step of round i."""
    i = np.arange(rounds)
    return {"first": (i == 0) * 1.0, "exponential": p**i, "linear": 1 - i / rounds}[kind]


@dataclass
class Result:
    """What an interactive algorithm returns."""

    best: Policy  # the iterate with the lowest validation cost: DAgger's guarantee is for this one
    last: Policy  # the final iterate
    log: list  # one dict per round
    obs: np.ndarray  # the aggregated dataset the last iterate was trained on; log[i]["data"] rows after round i
    actions: np.ndarray
    iterates: list  # every round's policy: DAgger's theory is about this sequence


class Rounds:
    """What the DAgger family shares from round to round: the aggregated data (it only grows), the expert
    (counting every state it is asked about: rows whose episode has ended and validation rollouts too), the
    retraining, and validation on the same episodes every round (cfg.val_seed). Every pair in the data is an
    expert label, so the log's `data` is the number of labels used. DAgger's guarantee is for the best
    iterate on validation, not the last; of tied iterates the later one, trained on more data, counts as best."""

    def __init__(self, policy, env, expert, cfg, rng, obs=None, actions=None):
        self.policy, self.env, self.rng = policy, env, _generator(rng)
        self.cfg, self.ask, self.calls = _config("cfg", cfg, DaggerConfig), _callable("expert", expert), 0
        self.obs = [] if obs is None else [obs]
        self.actions = [] if actions is None else [actions]
        self.log, self.iterates = [], []

    def expert(self, obs):
        self.calls += len(obs)
        return self.ask(obs)

    def learner(self):
        """The callable a rollout runs: the policy's sample (cfg.stochastic) or its deterministic action."""
        return (lambda obs: self.policy.sample(obs, self.rng)) if self.cfg.stochastic else self.policy.act

    def add(self, obs, actions):
        """Aggregate a round's expert labels."""
        self.obs.append(obs)
        self.actions.append(actions)

    def train(self, train=bc):
        """Retrain on everything so far: train(policy, obs, actions, rng, cfg.train), bc or bootstrap_bc;
        from the current parameters (cfg.warm_start) or a fresh init."""
        obs, actions = np.concatenate(self.obs), np.concatenate(self.actions)
        if len(obs) == 0:
            raise ValueError("no expert labels were collected: nothing to train on")
        if not self.cfg.warm_start:
            for member in getattr(self.policy, "members", [self.policy]):
                member.params = member.init(self.rng)
        train(self.policy, obs, actions, self.rng, self.cfg.train)

    def validate(self, **notes):
        """Roll out the retrained learner on the validation episodes; log its cost and its 0-1 error on the
        states it visited, and keep a copy of it (the iterate)."""
        cfg, n = self.cfg, sum(len(o) for o in self.obs)
        val = rollout(self.env, self.learner(), cfg.horizon, self.rng, expert=self.expert, seed=cfg.val_seed)
        wrong = np.linalg.norm(val.actions - val.labels, axis=2) > cfg.tol  # 1[||a - label|| > tol]
        cost, error = float(val.total_cost.mean()), float(wrong[val.mask].mean())
        self.log.append(dict(round=len(self.log) + 1, data=n, expert_calls=self.calls, cost=cost, error=error) | notes)
        self.iterates.append(self.policy.copy())

    def result(self):
        costs = [entry["cost"] for entry in self.log]
        best = len(costs) - 1 - int(np.argmin(costs[::-1]))  # the lowest validation cost; the later of ties
        obs, actions = np.concatenate(self.obs), np.concatenate(self.actions)
        return Result(self.iterates[best], self.iterates[-1], self.log, obs, actions, self.iterates)


def _interventions(traj):
    on = traj.intervened & traj.mask
    switches = (np.diff(on.astype(np.int8), axis=1) != 0).sum() + on[:, 0].sum()
    return dict(intervention_rate=float(on.sum() / traj.mask.sum()), switches=int(switches))


def dagger(policy, env, expert, rng, cfg=DaggerConfig()):
    """DAgger (Ross, Gordon & Bagnell 2011): roll out beta_i pi* + (1 - beta_i) pi_hat_i, let the expert
    label every visited state, aggregate, retrain. Returns the best iterate on validation and the last."""
    rounds = Rounds(_config("policy", policy, Policy), env, expert, cfg, rng)
    for beta in beta_schedule(cfg.beta, cfg.rounds, cfg.p):
        learner = rounds.learner()  # DAgger: the mixture beta pi* + (1 - beta) pi_hat acts, step by step
        traj = rollout(env, learner, cfg.horizon, rng, expert=rounds.expert, beta=float(beta), seed=_seed(rng))
        rounds.add(*traj.pairs())  # DAgger: the expert labels every visited state, whoever acted
        rounds.train(bc)
        rounds.validate(beta=float(beta))
    return rounds.result()


def hg_dagger(policy, env, expert, gate, obs, actions, rng, cfg=DaggerConfig()):
    """HG-DAgger (Kelly et al. 2019): start from BC on demonstrations (obs, actions); the learner drives;
    the expert takes over while gate(obs) flags a row unsafe and hands back once it has recovered.
    Only the expert's takeover segments are added to the data."""
    gate, cfg = _callable("gate", gate), _config("cfg", cfg, DaggerConfig)
    obs, actions = _config("policy", policy, Policy).check(obs, actions)
    bc(policy, obs, actions, rng, cfg.train)
    rounds = Rounds(policy, env, expert, cfg, rng, obs, actions)
    for _ in range(cfg.rounds):
        traj = rollout(  # HG-DAgger: the learner drives; the expert takes over while the gate holds
            env, rounds.learner(), cfg.horizon, rng, expert=rounds.expert, gate=gate, handback=cfg.handback,
            seed=_seed(rng),
        )  # fmt: skip
        rounds.add(*traj.pairs(where=traj.intervened))  # HG-DAgger: only where the expert was in control
        rounds.train(bc)
        rounds.validate(**_interventions(traj))
    return rounds.result()


def dart(policy, env, expert, noise, rng, cfg=DaggerConfig()):
    """DART (Laskey et al. 2017): the expert demonstrates with Gaussian noise of std `noise` added to the
    executed action, and each visited state is labeled with the expert's intended action, so the data
    holds small mistakes and the recoveries from them. Each round adds one batch of noisy demonstrations."""
    noise = _real("noise", noise, 0, 1e6)
    rounds = Rounds(_config("policy", policy, Policy), env, expert, cfg, rng)
    for _ in range(cfg.rounds):
        # DART: the expert acts, its hand perturbed by N(0, noise^2); its intended actions are the labels
        traj = rollout(env, None, cfg.horizon, rng, expert=rounds.expert, beta=1.0, noise=noise, seed=_seed(rng))
        rounds.add(*traj.pairs())
        rounds.train(bc)
        rounds.validate(noise=noise)
    return rounds.result()


def _seed(rng):
    return int(_generator(rng).integers(2**31))


class Ensemble:
    """K policies, each trained on its own bootstrap resample of the data (query by committee). The first
    member acts; the spread of the members' mean actions measures how unsure the learner is."""

    def __init__(self, members):
        self.members = [_config("members", m, Policy) for m in members]
        if len(self.members) < 2:
            raise ValueError(f"an ensemble needs at least two members, got {len(self.members)}")

    def act(self, obs):
        return self.members[0].act(obs)

    def sample(self, obs, rng):
        return self.members[0].sample(obs, rng)

    def uncertainty(self, obs):
        """sqrt(sum_d Var_k E_k[a_d | s]) (B,): the spread of the members' mean actions, the epistemic part of the
        ensemble's variance (Var a = E_k Var_k a + Var_k E_k a). Means, not modes: members that all pick the same
        argmax can still disagree on how sure they are, which is where they have seen no data."""
        a = np.stack([m.mean(obs) for m in self.members])  # (K, B, A)
        return np.sqrt(a.var(0).sum(1))

    def copy(self):
        return Ensemble(m.copy() for m in self.members)


def bootstrap_bc(ensemble, obs, actions, rng, cfg=TrainConfig()):
    """BC for every member of an ensemble, each on a bootstrap resample (N pairs drawn with replacement)."""
    rng = _generator(rng)
    for member in ensemble.members:
        i = rng.integers(0, len(obs), len(obs))
        bc(member, obs[i], actions[i], rng, cfg)


def active_dagger(ensemble, env, expert, obs, actions, threshold, queries, rng, cfg=DaggerConfig()):
    """Active DAgger (query by committee; ThriftyDAgger gates on the same novelty, Hoque et al. 2021): start
    from bootstrap BC on demonstrations (obs, actions); the learner drives; the expert labels only visited
    states where the ensemble's uncertainty is above `threshold`, at most `queries` of them per round, the
    most uncertain first. (The toy expert is asked at every step for convenience; only queried labels enter
    the data and the label count.)"""
    rng, queries, threshold = _generator(rng), _positive_int("queries", queries), _real("threshold", threshold, 0)
    cfg = _config("cfg", cfg, DaggerConfig)
    obs, actions = _config("ensemble", ensemble, Ensemble).members[0].check(obs, actions)
    bootstrap_bc(ensemble, obs, actions, rng, cfg.train)
    rounds = Rounds(ensemble, env, expert, cfg, rng, obs, actions)
    for _ in range(cfg.rounds):
        traj = rollout(env, rounds.learner(), cfg.horizon, rng, expert=rounds.expert, seed=_seed(rng))  # it drives
        states = traj.observations[:, :-1]
        u = ensemble.uncertainty(states.reshape(-1, states.shape[2])).reshape(traj.mask.shape)
        u = np.where(traj.mask, u, -np.inf)
        where = np.zeros(u.shape, bool)
        where.flat[np.argsort(-u, axis=None, kind="stable")[:queries]] = True  # active: the most uncertain states
        where &= u > threshold  # ... and only those above the threshold
        rounds.add(*traj.pairs(where=where))  # only the queried labels enter the data
        rounds.train(bootstrap_bc)
        rounds.validate(queries=int(where.sum()), uncertain_share=float((u > threshold)[traj.mask].mean()))
    return rounds.result()


def relabel(traj, rng, strategy="future", achieved=slice(0, 2)):
    """Hindsight relabeling (GCSL, Ghosh et al. 2021): every trajectory demonstrates reaching the states it
    reached. Returns new Trajectories whose observations have a goal appended: obs[..., achieved] of the
    episode's final state ("final"), or of a uniformly drawn strictly later state t2 > t ("future").
    The executed actions become the labels. traj is not modified."""
    if not isinstance(strategy, str) or strategy not in ("future", "final"):
        raise ValueError(f"strategy must be 'future' or 'final', got {strategy!r}")
    rng, achieved = _generator(rng), _columns("achieved", achieved, _config("traj", traj, Trajectories).obs_dim)
    if traj.actions is None:
        raise ValueError("relabel needs the executed actions: these trajectories are states only")
    n, T1, _ = traj.observations.shape
    length = traj.mask.sum(1)  # (n,) real steps; the final state is observations[:, length]
    t = np.arange(T1)[None, :]  # (1, T+1)
    if strategy == "final":
        t2 = np.broadcast_to(length[:, None], (n, T1))
    else:  # which goal is relabeled: a later state, t2 uniform in t+1 .. length (GCSL's tie-break t2 > t)
        t2 = t + 1 + np.floor(rng.random((n, T1)) * np.maximum(length[:, None] - t, 1)).astype(np.int64)
        t2 = np.minimum(t2, length[:, None])
    goal = traj.observations[np.arange(n)[:, None], t2][..., achieved]  # (n, T+1, G)
    observations = np.concatenate([traj.observations, goal], 2)
    costs = None if traj.costs is None else traj.costs.copy()
    return Trajectories(observations, traj.actions.copy(), costs, traj.mask.copy(), labels=traj.actions.copy())


def augment(obs, expert, noise, copies, rng, columns=slice(None)):
    """Synthetic recovery data for continuous tasks: `copies` perturbed copies of every demonstrated
    observation, with N(0, noise^2) added to `columns`, each labelled by expert(perturbed observations). The
    expert must read the state from the observation (e.g. a goal-conditioned [position, goal])."""
    rng, copies, noise = _generator(rng), _positive_int("copies", copies), _real("noise", noise, 0, 1e6)
    _callable("expert", expert)
    synthetic = np.repeat(as_float32("obs", obs, (None, None)), copies, 0)
    columns = _columns("columns", columns, synthetic.shape[1])
    synthetic[:, columns] += np.float32(noise) * rng.standard_normal(synthetic[:, columns].shape, dtype=np.float32)
    return synthetic, as_float32("expert(synthetic)", expert(synthetic), (len(synthetic), None))


def hindsight_bc(policy, traj, rng, cfg=TrainConfig(), strategy="future", achieved=slice(0, 2)):
    """Goal-conditioned BC on relabeled trajectories; the policy's observation is [obs, goal]."""
    relabeled = relabel(traj, rng, strategy, achieved)
    return bc(policy, *relabeled.pairs(), rng, cfg)


@dataclass(frozen=True)
class BCOConfig:
    """Behavioral cloning from observation: explore, fit the inverse model, label the demonstrations, clone."""

    explore_horizon: int = 1  # steps per exploration episode: a round explores env.num_envs x explore_horizon steps
    alpha: int = 0  # BCO(alpha): rounds after the first in which the policy explores and everything is refitted
    inverse: TrainConfig = TrainConfig(steps=2000, lr=1e-2)  # the inverse model's bc
    train: TrainConfig = TrainConfig(steps=1000, lr=3e-3)  # the policy's bc

    def __post_init__(self):
        _positive_int("explore_horizon", self.explore_horizon)
        _positive_int("alpha", self.alpha, 0)
        _config("inverse", self.inverse, TrainConfig)
        _config("train", self.train, TrainConfig)


def bco(policy, inverse, env, demos, explore, rng, cfg=BCOConfig(), state=slice(None)):
    """BCO (Torabi, Warnell & Stone 2018): imitation from state-only demonstrations. The learner explores with
    explore(obs) -> actions, fits an inverse dynamics model p(a | s, s') (a Policy on [s, s']) by bc on its own
    transitions, labels the demonstrations' transitions with it and clones the labels. BCO(alpha): alpha more
    rounds in which the policy explores and the inverse model is refitted on everything seen. The inverse model
    sees the observation columns `state` (those the dynamics depend on: not a goal). Returns the exploration steps."""
    rng, seen, cfg = _generator(rng), None, _config("cfg", cfg, BCOConfig)
    explore, inverse = _callable("explore", explore), _config("inverse", inverse, Policy)
    state = _columns("state", state, _config("demos", demos, Trajectories).obs_dim)
    s, s_next = demos.observations[:, :-1][demos.mask], demos.observations[:, 1:][demos.mask]  # no actions needed
    for i in range(cfg.alpha + 1):
        learner = explore if i == 0 else policy.act  # BCO(alpha): the policy explores after the first round
        new = rollout(env, learner, cfg.explore_horizon, rng, seed=_seed(rng))
        seen = new.transitions() if seen is None else [np.concatenate(x) for x in zip(seen, new.transitions())]
        bc(inverse, np.concatenate([seen[0][:, state], seen[2][:, state]], 1), seen[1], rng, cfg.inverse)
        labels = inverse.act(np.concatenate([s[:, state], s_next[:, state]], 1))  # BCO: inferred actions
        bc(policy, s, labels, rng, cfg.train)
    return len(seen[0])


@dataclass(frozen=True)
class OneShotConfig:
    """One-shot imitation: an encoder of whole demonstrations and a policy on [s, z], trained over many tasks."""

    horizon: int = 30  # the encoder's time stamp is t / horizon (fixed, so that padding changes nothing)
    steps_per_pair: int = 16  # (s, a) pairs drawn from each imitated demonstration
    time_stamp: bool = True  # the encoder reads (s_t, t / T); False: s_t alone, an order-blind bag of states
    train: TrainConfig = TrainConfig(steps=1500, lr=3e-3)  # batch_size / steps_per_pair demonstration pairs a step

    def __post_init__(self):
        _positive_int("horizon", self.horizon)
        _positive_int("steps_per_pair", self.steps_per_pair)
        if _config("train", self.train, TrainConfig).batch_size < self.steps_per_pair:
            raise ValueError(f"train.batch_size must be at least steps_per_pair = {self.steps_per_pair}")


def demo_features(demos, cfg=OneShotConfig()):
    """The encoder's input per demonstrated state, (n, T+1, O [+1: t / horizon]), and which are real (n, T+1)."""
    n, T1, _ = demos.observations.shape
    real = np.concatenate([np.ones((n, 1), bool), demos.mask], 1)  # s_0 and the s_{t+1} of every real step
    t = np.broadcast_to(np.arange(T1, dtype=np.float32)[None, :, None] / cfg.horizon, (n, T1, 1))
    return (np.concatenate([demos.observations, t], 2) if cfg.time_stamp else demos.observations), real


def encode_forward(net, params, x, real, buf=None):
    """z = 1/|T| sum_{t real} phi(x_t): x (P, T+1, I), real (P, T+1) -> z (P, E); padding weighs exactly 0."""
    P, T1, _ = x.shape
    w = (real / real.sum(1, keepdims=True)).astype(np.result_type(x, params))  # (P, T+1): w_t = m_t / |T|
    phi, cache = mlp_forward(net, params, x.reshape(P * T1, -1), buf)  # (P (T+1), E)
    return np.einsum("pt,pte->pe", w, phi.reshape(P, T1, -1)), (w, cache)


def encode_backward(net, params, dz, cache, dparams):
    """Through the pooling, dz_p/dphi_pt = w_pt I, so dL/dphi_pt = w_pt dL/dz_p; then through phi into dparams."""
    w, mlp_cache = cache
    mlp_backward(net, params, (w[:, :, None] * dz[:, None, :]).reshape(-1, dz.shape[1]), mlp_cache, dparams, False)


def one_shot_loss(policy, encoder, enc_params, demo, real, obs, actions, rng, grad, enc_grad):
    """L = 1/(P M) sum_pk l(a_pk | [s_pk, z_p]), z_p = encode(demo_p): the policy's loss, end to end through the
    encoder. demo (P, T+1, I), real (P, T+1), obs (P, M, O), actions (P, M, A); writes grad and enc_grad."""
    P, M, O = obs.shape
    flat = demo.reshape(-1, demo.shape[2])
    z, cache = encode_forward(
        encoder, enc_params, demo, real, buffers(policy.workspace, "demonstration encoder", encoder, flat, enc_params)
    )
    x = np.concatenate([obs, np.broadcast_to(z[:, None], (P, M, z.shape[1]))], 2).reshape(P * M, -1)  # [s, z]
    head = policy.head
    loss, dx = head.policy_loss(
        policy.net, policy.params, x, actions.reshape(P * M, -1), rng, grad, None, policy.workspace, True
    )
    dz = dx[:, O:].reshape(P, M, -1).sum(1)  # z_p feeds M rows: their gradients add up
    encode_backward(encoder, enc_params, dz, cache, enc_grad)
    return loss


def one_shot(policy, encoder, demos, per, rng, cfg=OneShotConfig()):
    """One-shot imitation (Duan et al. 2017): train the policy (on [s, z]) and the demonstration encoder end to
    end over many tasks. demos: rows in groups of `per` >= 2 demonstrations of one task, from different starts;
    each step encodes one of a group and imitates another. Returns the encoder's parameters."""
    rng, per, cfg = _generator(rng), _positive_int("per", per, 2), _config("cfg", cfg, OneShotConfig)
    _config("demos", demos, Trajectories)
    if demos.actions is None or len(demos.mask) < per or not demos.mask.any(1).all():
        raise ValueError(
            f"one_shot needs demonstrations with actions and a real step in every row, at least one task of {per}; "
            f"got {len(demos.mask)} rows"
        )
    x, real = demo_features(demos, cfg)
    tasks, M = len(demos.mask) // per, cfg.steps_per_pair
    length, P = demos.mask.sum(1), cfg.train.batch_size // M
    enc_params = encoder.init(rng)
    opts = [Adam(p.size, cfg.train.lr, max_norm=cfg.train.max_grad_norm) for p in (policy.params, enc_params)]
    grad, enc_grad = np.empty_like(policy.params), np.empty_like(enc_params)
    for step in range(cfg.train.steps):
        for opt in opts:
            opt.lr = cfg.train.step_size(step)
        task, i = rng.integers(0, tasks, P), rng.integers(0, per, P)
        shown, imitated = task * per + i, task * per + (i + rng.integers(1, per, P)) % per  # one task, two starts
        t = (rng.random((P, M)) * length[imitated, None]).astype(np.int64)  # real steps of the imitated demos
        s, a = demos.observations[imitated[:, None], t], demos.actions[imitated[:, None], t]  # (P, M, O), (P, M, A)
        loss = one_shot_loss(policy, encoder, enc_params, x[shown], real[shown], s, a, rng, grad, enc_grad)
        loss = loss if np.isfinite(enc_grad).all() else math.nan  # neither network steps unless both can
        opts[0].step(policy.params, grad, loss, f"one_shot: step {step}")
        opts[1].step(enc_params, enc_grad, loss, f"one_shot: step {step} (encoder)")
    return enc_params


def one_shot_actor(policy, encoder, enc_params, demo, cfg=OneShotConfig()):
    """The policy conditioned on one demonstration per env row (Trajectories with n rows): obs -> pi([s, z])."""
    z, _ = encode_forward(encoder, enc_params, *demo_features(demo, cfg))
    return lambda obs: policy.act(np.concatenate([obs, z.astype(np.float32)], 1))


@dataclass(frozen=True)
class TCNConfig:
    """Time-contrastive networks: two encoders, one per view, trained on time-synchronised episodes."""

    alpha: float = 0.5  # the triplet margin, on the unit sphere (distances^2 in [0, 4])
    gap: int = 2  # a negative lies at least this many steps from its anchor, in the same episode,
    far: int = 4  # and at most this many: near enough to be a hard negative, which sharpens the embedding
    train: TrainConfig = TrainConfig(steps=1000, lr=1e-3)

    def __post_init__(self):
        if not 1 <= _positive_int("gap", self.gap) <= _positive_int("far", self.far):
            raise ValueError(f"need 1 <= gap <= far, got gap {self.gap}, far {self.far}")
        _real("alpha", self.alpha, 0, open_low=True)
        _config("train", self.train, TrainConfig)


def triplet_forward(za, zp, zn, alpha):
    """L = 1/B sum_b max(0, ||za - zp||^2 - ||za - zn||^2 + alpha): anchors, positives, negatives (B, E).
    Returns L and which triplets still violate the margin (B,)."""
    margin = ((za - zp) ** 2).sum(1) - ((za - zn) ** 2).sum(1) + alpha  # (B,)
    return float(np.maximum(margin, 0).mean()), margin > 0


def triplet_backward(za, zp, zn, active):
    """dL/dza, dL/dzp, dL/dzn (B, E): 2/B of the differences, on the triplets that violate the margin only."""
    w = (2 / len(za)) * active[:, None].astype(za.dtype)  # (B, 1)
    return w * (zn - zp), w * (zp - za), w * (za - zn)  # d||za - zp||^2 - d||za - zn||^2


def unit_forward(z):
    """y = z / ||z||: the embedding on the unit sphere, where the margin alpha has a fixed scale. z (B, E)."""
    norm = np.sqrt((z * z).sum(1, keepdims=True) + 1e-12)  # (B, 1); a zero embedding stays finite
    return z / norm, norm


def unit_backward(dy, y, norm):
    """dL/dz = (dy - y (y . dy)) / ||z||: the part of dy along y only rescales z, which changes nothing."""
    return (dy - y * (y * dy).sum(1, keepdims=True)) / norm


def embed(net, params, x):
    """f(x) = g(x) / ||g(x)||, g an MLP: an encoder's embedding (B, E)."""
    return unit_forward(mlp_forward(net, params, x)[0])[0]


def tcn_loss(first, first_params, third, third_params, anchor, positive, negative, alpha, first_grad, third_grad):
    """The triplet loss through both encoders: anchor (B, O) first-person observations x_a, positive and negative
    (B, P) third-person frames x_p (the same moment) and x_n (another). Writes both gradients; returns L."""
    B = len(anchor)
    g1, first_cache = mlp_forward(first, first_params, anchor)  # (B, E)
    g3, third_cache = mlp_forward(third, third_params, np.concatenate([positive, negative]))  # (2B, E)
    (za, norm1), (z3, norm3) = unit_forward(g1), unit_forward(g3)  # f1(x_a); f3(x_p) and f3(x_n)
    loss, active = triplet_forward(za, z3[:B], z3[B:], alpha)
    dza, dzp, dzn = triplet_backward(za, z3[:B], z3[B:], active)
    dz3 = unit_backward(np.concatenate([dzp, dzn]), z3, norm3)  # (2B, E): a frame's gradient, positive or negative
    mlp_backward(first, first_params, unit_backward(dza, za, norm1), first_cache, first_grad, False)
    mlp_backward(third, third_params, dz3, third_cache, third_grad, False)
    return loss


def tcn(first, third, observations, frames, mask, rng, cfg=TCNConfig()):
    """Multi-view time-contrastive networks (Sermanet et al. 2018): train f1 on the learner's observations
    (n, T+1, O) and f3 on the same moments filmed from another view, frames (n, T+1, P), so that a moment's two
    views embed close and the episode's other moments (cfg.gap to cfg.far steps away) further by alpha: the
    anchor is a first-person observation, positive and negative are frames. mask (n, T): the real steps.
    Returns the two encoders' parameters."""
    rng, cfg = _generator(rng), _config("cfg", cfg, TCNConfig)
    observations = as_float32("observations", observations, (None, None, None))
    frames = as_float32("frames", frames, (len(observations), observations.shape[1], None))
    O, P = observations.shape[2], frames.shape[2]
    if first.sizes[0] != O or third.sizes[0] != P or first.sizes[-1] != third.sizes[-1]:
        raise ValueError(f"need encoders ({O}, ..., E) and ({P}, ..., E), got {first.sizes} and {third.sizes}")
    mask = check_array("mask", np.asarray(mask), (len(observations), observations.shape[1] - 1)).astype(bool)
    last = mask.sum(1)  # (n,) each episode's last real state: states 0..last are real
    if np.any(last + 1 < 2 * cfg.far):
        raise ValueError(f"every episode needs at least {2 * cfg.far} states, for negatives up to {cfg.far} steps away")
    first_params, third_params = first.init(rng), third.init(rng)
    opts = [Adam(p.size, cfg.train.lr, max_norm=cfg.train.max_grad_norm) for p in (first_params, third_params)]
    first_grad, third_grad = np.empty_like(first_params), np.empty_like(third_params)
    for step in range(cfg.train.steps):
        opts[0].lr = opts[1].lr = cfg.train.step_size(step)
        i = rng.integers(0, len(last), cfg.train.batch_size)
        t = (rng.random(len(i)) * (last[i] + 1)).astype(np.int64)  # the anchor's moment
        d = rng.integers(cfg.gap, cfg.far + 1, len(i)) * rng.choice(np.int64([-1, 1]), len(i))  # the negative's offset
        tn = np.where((t + d < 0) | (t + d > last[i]), t - d, t + d)  # the negative's moment, kept in the episode
        loss = tcn_loss(
            first, first_params, third, third_params,
            observations[i, t], frames[i, t], frames[i, tn],  # TCN: anchor and positive are one moment, two views
            cfg.alpha, first_grad, third_grad,
        )  # fmt: skip
        loss = loss if np.isfinite(third_grad).all() else math.nan  # neither network steps unless both can
        opts[0].step(first_params, first_grad, loss, f"tcn: step {step}")
        opts[1].step(third_params, third_grad, loss, f"tcn: step {step} (third-person encoder)")
    return first_params, third_params


def nearest(queries, keys, k=1):
    """Indices (Q, k) of the k keys (M, E) nearest to each query (Q, E) in Euclidean distance, in no order."""
    if not 1 <= _positive_int("k", k) <= len(keys):
        raise ValueError(f"k must be at most the number of keys, {len(keys)}, got {k}")
    d = (queries**2).sum(1)[:, None] - 2 * queries @ keys.T + (keys**2).sum(1)[None]  # (Q, M)
    return np.argpartition(d, k - 1, 1)[:, :k]  # the k smallest, in no particular order


def video_goal(first, first_params, third, third_params, frames, observations, k=1):
    """Third-person imitation by translation: where each video ends, in the learner's own view. The videos' last
    frames (n, P) go through f3, candidate first-person observations (M, O) (the learner's play) through f1; the
    goal is the mean of the k candidates nearest in the embedding (n, O), for a goal-conditioned policy."""
    z3, z1 = embed(third, third_params, frames), embed(first, first_params, observations)  # (n, E), (M, E)
    return observations[nearest(z3, z1, k)].mean(1)  # (n, O)


# ---- imitation and RL ----
# The policy gradient reuses every head's weighted loss L = 1/B sum_i w_i l_i with l_i = -log pi(a_i | s_i):
# w = advantages gives grad J = E[sum_t grad log pi(a_t | s_t) A_t], and PPO's clipped surrogate is the weight
# w_i = A_i ratio_i where the ratio is inside the clip range, 0 outside. No head needs a second set of gradients.


@dataclass(frozen=True)
class PPOConfig:
    """PPO-clip with GAE(lambda); each iteration rolls out every sub-environment once."""

    iterations: int = 40  # rollout-then-update rounds: at most iterations x num_envs x horizon env steps
    horizon: int = 30  # steps per rollout; a row still running there is bootstrapped with V(s_T)
    gamma: float = 0.99  # discount
    lam: float = 0.95  # GAE's lambda: 0 is the one-step TD error, 1 the Monte Carlo return minus V
    clip: float = 0.2  # the ratio pi / pi_old is trusted within [1 - clip, 1 + clip]
    epochs: int = 4  # passes over each batch
    minibatches: int = 4  # per pass
    lr: float = 3e-4  # the policy's Adam step size
    max_grad_norm: float = 0.5  # clip the policy gradient's global norm
    entropy: float = 0.0  # alpha of the soft reward r - alpha log pi(a | s): an entropy bonus paid as reward
    value: TrainConfig = TrainConfig(steps=60, lr=1e-3, cosine=False)  # the critic's bc after each iteration

    def __post_init__(self):
        for name in ("iterations", "horizon", "epochs", "minibatches"):
            _positive_int(name, getattr(self, name))
        _real("gamma", self.gamma, 0, 1)
        _real("lam", self.lam, 0, 1)
        _real("clip", self.clip, 0, 1, open_low=True, open_high=True)
        _real("lr", self.lr, 0, 1, open_low=True)
        _real("max_grad_norm", self.max_grad_norm, 0)
        _real("entropy", self.entropy, 0)
        _config("value", self.value, TrainConfig)


def gae(rewards, values, mask, terminal, gamma, lam):
    """A_t = sum_k (gamma lam)^k delta_{t+k}, delta_t = r_t + gamma V(s_{t+1}) - V(s_t); rewards, mask (n, T),
    values (n, T+1), terminal (n,). At a row's last real step V(s_next) bootstraps the return unless the
    episode terminated there (terminal); truncated by a horizon, it goes on in V."""
    ends = mask & ~np.concatenate([mask[:, 1:], np.zeros_like(mask[:, :1])], 1)  # each row's last real step
    live = np.where(ends, ~np.asarray(terminal, bool)[:, None], True)  # (n, T): s_{t+1} continues the episode
    adv, running = np.zeros_like(rewards), np.zeros(len(rewards), rewards.dtype)
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * live[:, t] * values[:, t + 1] - values[:, t]  # the TD error
        running = np.where(mask[:, t], delta + gamma * lam * live[:, t] * running, 0)  # A_t = delta_t + gamma lam A_t+1
        adv[:, t] = running
    return adv


def clipped_weights(l_old, A, clip):
    """PPO's L = -1/B sum_i min(ratio_i A_i, clip(ratio_i, 1 - eps, 1 + eps) A_i), ratio = pi / pi_old =
    exp(l_old - l), as weights on the heads' losses l = -log pi: dL = 1/B sum_i w_i dl_i with w_i = A_i ratio_i
    where the min follows ratio A, and 0 where it is flat (clipped). A function of l, as weigh allows."""

    def w(l):
        ratio = np.exp(l_old - l)  # d(-ratio A) = A ratio dl
        return np.where(np.where(A > 0, ratio < 1 + clip, ratio > 1 - clip), A * ratio, 0)

    return w


def ppo(policy, env, rng, cfg=PPOConfig(), reward=None, value=None, evaluate=None):
    """PPO (Schulman et al. 2017), in place on policy.params. Each iteration: roll out every sub-environment
    with sampled actions, score the steps by GAE(lambda) against the critic, take epochs x minibatches clipped
    steps, then refit the critic (a Policy(L2Head(1), O), trained by bc on A + V). reward(traj) -> (n, T)
    replaces the env's r = -cost (shaping, GAIL); evaluate(policy) -> dict is logged after every iteration.
    Needs a head with a stochastic policy and an exact log-likelihood. Returns the log, a dict per iteration."""
    rng, cfg = _generator(rng), _config("cfg", cfg, PPOConfig)
    reward, evaluate = _callable("reward", reward, True), _callable("evaluate", evaluate, True)
    if isinstance(_config("policy", policy, Policy).head, (L2Head, DiffusionHead, CVAEHead)):
        raise ValueError(
            "ppo needs a stochastic head with an exact log-likelihood: Gaussian, mixture, categorical or autoregressive"
        )
    value = Policy(L2Head(1), policy.obs_dim, rng) if value is None else _config("value", value, Policy)
    opt, grad = Adam(policy.params.size, cfg.lr, max_norm=cfg.max_grad_norm), np.empty_like(policy.params)
    log, env_steps = [], 0
    for it in range(_positive_int("iterations", cfg.iterations)):
        sampled = []  # the policy's own actions: the env may clip or round what it executes (Box, Discrete)

        def act(o, sampled=sampled):
            sampled.append(policy.sample(o, rng))
            return sampled[-1]

        traj = rollout(env, act, cfg.horizon, rng, seed=_seed(rng))  # pi acts
        obs, mask = traj.observations, traj.mask  # (n, T+1, O), (n, T)
        (n, T), O = mask.shape, obs.shape[2]
        taken = np.zeros((n, T, sampled[0].shape[1]), np.float32)
        taken[:, : len(sampled)] = np.stack(sampled, 1)
        s, a = obs[:, :-1][mask], taken[mask]  # (B, O), (B, A): the real steps
        l_old = -policy.log_prob(s, a)  # l = -log pi_old(a | s), fixed during the update
        r = -traj.costs if reward is None else as_float32("reward(traj)", reward(traj), (n, T)) * mask  # RL: reward
        r[mask] += cfg.entropy * l_old  # soft RL: r - alpha log pi(a | s)
        v = value.act(obs.reshape(-1, O)).reshape(n, T + 1)  # V(s_t)
        adv = gae(r, v, mask, traj.terminal, cfg.gamma, cfg.lam)
        A, target = adv[mask], (adv + v[:, :-1])[mask]  # (B,): the advantages and the critic's targets
        A = (A - A.mean()) / (A.std() + 1e-8)
        for epoch in range(cfg.epochs):
            for i in np.array_split(rng.permutation(len(s)), cfg.minibatches):
                w = clipped_weights(l_old[i], A[i], cfg.clip)  # PPO: the head's own loss, reweighted
                loss, _ = policy.head.policy_loss(policy.net, policy.params, s[i], a[i], rng, grad, w, policy.workspace)
                opt.step(policy.params, grad, loss, f"ppo: iteration {it}, epoch {epoch}")
        bc(value, s, target[:, None], rng, cfg.value)
        env_steps += int(mask.sum())
        notes = dict(iteration=it + 1, env_steps=env_steps, reward=float((r * mask).sum(1).mean()))
        log.append(notes | dict(cost=float(traj.total_cost.mean())) | (evaluate(policy) if evaluate else {}))
    return log


def shaped_reward(bc_policy, lam, low=-1.0, high=1.0):
    """r + lam log pi_BC(a | s) with r = -cost: BC as a reward term (pi_BC frozen), a pull towards the
    demonstrations. The density is taken at the executed action, clipped to the env's bounds [low, high]."""

    def reward(traj):
        (n, T, A), O = traj.actions.shape, traj.observations.shape[2]
        s, a = traj.observations[:, :-1].reshape(n * T, O), np.clip(traj.actions, low, high).reshape(n * T, A)
        return -traj.costs + lam * bc_policy.log_prob(s, a).reshape(n, T)

    return reward


def gail_reward(D, obs, actions):
    """r = -log(1 - D(s, a)) = -log p(class 0 | [s, a]), D = p(class 1) = P("expert"); obs (n, T, O) -> (n, T)."""
    n, T, _ = obs.shape
    x = np.concatenate([obs, actions], 2).reshape(n * T, -1)
    return -D.log_prob(x, np.zeros((n * T, 1), np.float32)).reshape(n, T)


def gail(policy, env, obs, actions, rng, cfg=PPOConfig(), disc=TrainConfig(steps=40, cosine=False), evaluate=None):
    """GAIL (Ho & Ermon 2016): min_pi max_D E_expert[log D] + E_pi[log(1 - D)]. The discriminator D is a
    Policy(CategoricalHead([0, 1]), O + A) on [s, a] (two classes: logistic regression on the logit
    difference), refit by bc before each policy update on as many expert pairs (label 1) as the rollout's
    (label 0); PPO maximises r = -log(1 - D(s, a)). obs, actions: the demonstrations. GAIL's objective has an
    entropy term, cfg.entropy: a learner more deterministic than the demonstrator makes D rate the
    demonstrator's rare actions above its common ones. Returns D (the learned reward) and PPO's log."""
    rng, disc = _generator(rng), _config("disc", disc, TrainConfig)
    obs, actions = _config("policy", policy, Policy).check(obs, actions)
    D = Policy(CategoricalHead([0, 1]), obs.shape[1] + actions.shape[1], rng)
    expert = np.concatenate([obs, actions], 1)  # (N, O + A)

    def reward(traj):
        learner = np.concatenate([traj.observations[:, :-1], traj.actions], 2)[traj.mask]  # (B, O + A)
        x = np.concatenate([expert[rng.integers(0, len(expert), len(learner))], learner])  # balanced
        y = np.repeat(np.float32([[1], [0]]), len(learner), 0)  # 1: expert, 0: learner
        bc(D, x, y, rng, disc)  # GAIL: the discriminator's step
        return gail_reward(D, traj.observations[:, :-1], traj.actions)

    return D, ppo(policy, env, rng, cfg, reward=reward, evaluate=evaluate)


# ---- evaluation ----


def bootstrap_ci(values, rng, n_boot=2000, level=0.95):
    """Percentile bootstrap interval of the mean. Resamples counts of the distinct values (multinomial),
    which equals resampling the values themselves and is fast for costs that take few values."""
    values = check_array("values", np.asarray(values, np.float64), (None,))
    if len(values) == 0 or _positive_int("n_boot", n_boot) < 1 or not 0 < level < 1:
        raise ValueError(f"need non-empty values and level in (0, 1), got {len(values)} values, level {level}")
    uniq, counts = np.unique(values, return_counts=True)
    means = _generator(rng).multinomial(len(values), counts / len(values), size=n_boot) @ uniq / len(values)
    return np.quantile(means, [(1 - level) / 2, (1 + level) / 2]), means


def loglog_slope(x, y):
    """Least-squares slope of log y against log x (y along the last axis): 2 for eps T^2, 1 for eps T."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if np.any(x <= 0) or np.any(y <= 0):
        raise ValueError("a log-log slope needs positive x and y")
    lx, ly = np.log(x), np.log(y)
    lx = lx - lx.mean()
    return ((ly - ly.mean(-1, keepdims=True)) * lx).sum(-1) / (lx * lx).sum()


# ---- tour ----


def tour(seed=0, steps=1500):
    """Every head, trained by BC on bimodal demonstrations (a = +1 or -1 with equal odds, whatever the
    observation), and what each one learned: L2 and the Gaussian's mean land between the modes; the
    expressive heads sample both modes and rarely the midpoint."""
    rng = np.random.default_rng(seed)
    obs = rng.uniform(-1, 1, (4096, 2)).astype(np.float32)
    actions = rng.choice(np.float32([-1, 1]), (4096, 1))
    heads = {
        "l2": L2Head(1),
        "gaussian": GaussianHead(1),
        "mixture": MixtureHead(1, 5),
        "categorical": CategoricalHead([-1, 0, 1]),
        "autoregressive": AutoregressiveHead([-1.5], [1.5], bins=15),
        "diffusion": DiffusionHead([-1.5], [1.5]),
        "cvae": CVAEHead(1, latent_dim=1),
    }
    test = rng.uniform(-1, 1, (2000, 2)).astype(np.float32)
    print(f"{'head':<15}{'final loss':>11}{'mean action':>13}{'near -1':>9}{'near +1':>9}{'near 0':>8}")
    for name, head in heads.items():  # the diffusion head's noise predictor needs a bigger network; tanh units
        hidden = (256, 256, 256) if name == "diffusion" else (64, 64)  # keep the CVAE from posterior collapse
        policy = Policy(head, 2, rng, hidden=hidden, activation="tanh" if name == "cvae" else "relu")
        losses = bc(policy, obs, actions, rng, TrainConfig(steps=steps))
        a = policy.sample(test, rng)[:, 0]
        near = [np.mean(np.abs(a - m) < 0.5) for m in (-1, 1, 0)]
        print(f"{name:<15}{losses[-100:].mean():>11.3f}{a.mean():>13.2f}{near[0]:>9.0%}{near[1]:>9.0%}{near[2]:>8.0%}")


if __name__ == "__main__":
    tour()
