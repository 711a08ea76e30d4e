"""Energy networks. One convention: forward(x, y, t) returns a per-example scalar energy (B,), lower = better.

The MLP is the release's continuous-task EBM: width 512, three hidden layers with
swish, FiLM time conditioning on layers 2 and 3, and energy = sum of squares of a d_out-dimensional output.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from ebmtool.method.diffusion import CallCounter, Condition
from ebmtool.runtime.errors import InputError

DEFAULT_WIDTH = 512  # the reference MLP's hidden width
PER_ROW_TERMS = (2, 3, 6, 7)  # EnergyMLP._layers' FiLM gains and biases, one row per row (unless folded)


MODEL_BUILDERS: dict[str, Callable[[dict], nn.Module]] = {}  # arch -> builder(dims); see register_model


def register_model(arch: str, builder: Callable[[dict], nn.Module]) -> Callable[[dict], nn.Module]:
    """Register an energy network: `builder(dims)` builds it from the `dims` a task's `model_dims` returns (and a
    checkpoint records), whose "arch" is `arch`. Each architecture below registers itself; plugins register
    theirs in their own module. An arch registered twice is an InputError."""
    if arch in MODEL_BUILDERS:
        raise InputError(f"the model architecture {arch!r} is registered twice")
    MODEL_BUILDERS[arch] = builder
    return builder


def sinusoidal_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """[sin(t f), cos(t f)] with f_k = exp(-ln(1e4) k / (half - 1)); t is the raw integer level 0..9."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / (half - 1))
    args = t.float()[:, None] * freqs[None, :]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=-1)


class TimeMLP(nn.Module):
    """sinusoidal(dim) -> Linear -> GELU -> Linear."""

    def __init__(self, dim: int = 128, hidden: int = 128):
        super().__init__()
        self.dim = dim
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, hidden)

    def forward(self, t):
        # the embedding is float32; a float64 network (the gradient checks) takes it in its own dtype
        return self.fc2(F.gelu(self.fc1(sinusoidal_embedding(t, self.dim).to(self.fc1.weight.dtype))))


class EnergyMLP(nn.Module):
    """E(x, y, t) = || W4 h3 ||^2 with h_l = swish(W_l h_{l-1} (1 + gamma_l) + beta_l) on layers 2 and 3.

    `explicit_grad` (True; settable per instance) makes `diffusion.energy_and_grad` use `energy_and_grad`, the
    explicit input gradient, instead of torch.autograd.grad (False: the double-backward reference)."""

    explicit_grad: bool = True

    def __init__(self, x_dim: int, y_dim: int, width: int = DEFAULT_WIDTH, time_dim: int = 128):
        super().__init__()
        self.dims = {"arch": "mlp", "x_dim": x_dim, "y_dim": y_dim, "width": width, "time_dim": time_dim}
        self.fc1 = nn.Linear(x_dim + y_dim, width)
        self.fc2 = nn.Linear(width, width)
        self.fc3 = nn.Linear(width, width)
        self.fc4 = nn.Linear(width, y_dim)
        self.time = TimeMLP(time_dim, time_dim)
        self.film2 = nn.Linear(time_dim, 2 * width)
        self.film3 = nn.Linear(time_dim, 2 * width)
        self.counter = CallCounter()

    def forward(self, x, y, t):
        """E(x, y, t) (B,); x a tensor or a Condition of this model (`condition`)."""
        self.counter.calls += 1
        self.counter.rows += y.shape[0]
        proj, layers = self._prepared(x, t)
        return mlp_forward(proj, y, self._w1y(), *layers, self.fc4.weight, self.fc4.bias)[0]

    def energy_and_grad(self, x, y, t):
        """(E (B,), dE/dy (B, y_dim)) computed explicitly: the forward pass keeps its pre-activations and the
        input gradient is the layer-by-layer vector-Jacobian product written as ordinary tensor ops
        (`mlp_energy_and_grad`), through fc1's y columns only. Both are plain differentiable functions of the
        parameters, so training's denoising loss back-propagates through them with first-order autograd (no
        double backward), and the computation can be compiled (`compile_explicit`). The same energy as
        `forward`, and the same count: one network call of y.shape[0] rows (`diffusion.energy_and_grad` adds
        the gradient count).

        Gradient mode is the caller's: under torch.no_grad (the sampler, descent) nothing is recorded."""
        self.counter.calls += 1
        self.counter.rows += y.shape[0]
        proj, layers = self._prepared(x, t)
        core = self.__dict__.get("_explicit_core") or mlp_energy_and_grad
        return core(proj, y, self._w1y(), *layers, self.fc4.weight, self.fc4.bias)

    def condition(self, x, t=None) -> Condition:
        """x prepared for the calls that share it (`diffusion.condition`): its projection through fc1's x
        columns plus fc1's bias, x's share of the first layer (2 width x_dim FLOPs per row, spent once rather
        than in every call; counted in `counter.proj_rows`, and `proj_grad_rows` when gradients are recorded),
        and, given the level tensor t, the FiLM terms of its levels (`_layers`). A Condition passed in keeps its
        projection. Gradient mode is the caller's: training makes its Condition with gradients recorded, so its
        calls back-propagate into fc1's x columns through the shared projection."""
        c = x
        if not isinstance(x, Condition):
            recording = torch.is_grad_enabled()
            self.counter.proj_rows += x.shape[0]
            self.counter.proj_grad_rows += x.shape[0] if recording else 0
            c = Condition(x, F.linear(x, self.fc1.weight[:, :self.dims["x_dim"]], self.fc1.bias))
        if t is None or c.t is t:
            return c
        layers = self._layers(t)
        return Condition(c.x, c.proj, t, layers, () if layers[2] is None else PER_ROW_TERMS)

    def _prepared(self, x, t):
        """(x's projection, the layer terms of t) for one call: a Condition's own where it holds them for this
        very t (the same tensor), computed otherwise."""
        c = self.condition(x)
        return c.proj, (c.layers if c.t is t else self._layers(t))

    def _w1y(self):
        return self.fc1.weight[:, self.dims["x_dim"]:]

    def _layers(self, t):
        """fc2 and fc3 with their FiLM terms for the levels t: (w2, b2, s2, c2, w3, b3, s3, c3), a layer being
        (h W^T + b) s + c with s = 1 + gain, c = the FiLM bias. At one level with nothing recorded (every call
        of the sampler) the terms are folded into the weights once, W' = diag(s) W, b' = b s + c, s = c = None:
        the same layer as one matrix product, and the vector-Jacobian product (d s) W = d W' needs no multiply
        either; a descent's or a sampler level's calls share the folded weights through their Condition."""
        gain2, bias2, gain3, bias3 = self._film(t)
        s2, s3 = 1 + gain2, 1 + gain3
        if s2.shape[0] == 1 and not torch.is_grad_enabled():
            s2, s3 = s2[0], s3[0]
            return (self.fc2.weight * s2[:, None], self.fc2.bias * s2 + bias2[0], None, None,
                    self.fc3.weight * s3[:, None], self.fc3.bias * s3 + bias3[0], None, None)
        return self.fc2.weight, self.fc2.bias, s2, bias2, self.fc3.weight, self.fc3.bias, s3, bias3

    def _film(self, t, per_row: bool | None = None):
        """FiLM gains and biases of layers 2 and 3 per row. They depend on the level only, so on a CPU they are
        evaluated once per distinct level (at most 10 rows) and gathered, instead of once per row (a fifth of the
        network's FLOPs at width 512); the gather is an embedding lookup, whose backward (a sorted segment sum) is
        ~25x faster on a CPU than advanced indexing's index_put. On CUDA the rows are evaluated directly:
        `torch.unique` has a data-dependent size and would stop the host for the GPU at every network call,
        and a GPU at these widths is bound by such stalls and launches, not by FLOPs. Same function either way."""
        if t.is_cuda if per_row is None else per_row:
            temb = self.time(t)
            return (*self.film2(temb).chunk(2, dim=-1), *self.film3(temb).chunk(2, dim=-1))
        levels, row_level = torch.unique(t, return_inverse=True)
        temb = self.time(levels)
        if levels.shape[0] == 1 and not torch.is_grad_enabled():
            # one level (every call of the sampler): rows of shape (1, width) that broadcast over the batch, the
            # same products without gathering (B, width) copies; with gradients recorded the rows are gathered
            # as below, so training's parameter gradients are summed the same way whatever the batch's levels
            return (*self.film2(temb).chunk(2, dim=-1), *self.film3(temb).chunk(2, dim=-1))
        gain2, bias2 = F.embedding(row_level, self.film2(temb)).chunk(2, dim=-1)
        gain3, bias3 = F.embedding(row_level, self.film3(temb)).chunk(2, dim=-1)
        return gain2, bias2, gain3, bias3


register_model("mlp", lambda d: EnergyMLP(d["x_dim"], d["y_dim"], d["width"], d["time_dim"]))


class SiluGrad(torch.autograd.Function):
    """dh * silu'(a) as one recorded operation: torch's fused kernel forward, and an explicit backward with
    silu''(a) = s (1 - s) (2 + a (1 - 2 s)), s = sigmoid(a). Written out as tensor ops instead, autograd would
    record and differentiate five elementwise operations (training's denoising loss differentiates this
    product once more); this is the same function with fewer passes over (B, width) tensors."""

    @staticmethod
    def forward(ctx, dh, a):
        ctx.save_for_backward(dh, a)
        return torch.ops.aten.silu_backward(dh, a)

    @staticmethod
    def backward(ctx, grad):
        dh, a = ctx.saved_tensors
        s = torch.sigmoid(a)
        one_minus_s = 1 - s
        d_dh = s * (1 + a * one_minus_s)  # silu'(a)
        d_a = dh * (s * one_minus_s) * (2 + a * (1 - 2 * s))  # dh * silu''(a)
        return grad * d_dh, grad * d_a


def _silu_grad(dh, a):
    """dh * silu'(a), silu'(a) = s (1 + a (1 - s)) with s = sigmoid(a): torch's fused kernel for SiLU's
    derivative, which is also what autograd computes for it, so E and dE/dy match autograd.grad bit for bit in
    float32 on a CPU. With gradients recorded (training) it goes through SiluGrad, whose backward is explicit;
    without (the sampler, descent) it records nothing."""
    if torch.is_grad_enabled():
        return SiluGrad.apply(dh, a)
    return torch.ops.aten.silu_backward(dh, a)


def _film_linear(h, w, b, s, c):
    """(h W^T + b) s + c, or h W^T + b where the FiLM terms are folded into (w, b) (s = None)."""
    a = F.linear(h, w, b)
    return a if s is None else a * s + c


def mlp_forward(proj, y, w1y, w2, b2, s2, c2, w3, b3, s3, c3, w4, b4):
    """EnergyMLP's forward pass from x's projection `proj` (x's share of fc1, its bias included), fc1's y columns
    and the FiLM'ed layers (EnergyMLP._layers): (E, o, a1, a2, a3), the pre-activations kept for the gradient.
    y takes the projection's dtype, as concatenating [x, y] promoted it before."""
    a1 = torch.addmm(proj, y.to(proj.dtype), w1y.t())
    a2 = _film_linear(F.silu(a1), w2, b2, s2, c2)
    a3 = _film_linear(F.silu(a2), w3, b3, s3, c3)
    out = F.linear(F.silu(a3), w4, b4)
    return out.pow(2).sum(dim=-1), out, a1, a2, a3


def mlp_energy_and_grad(proj, y, w1y, w2, b2, s2, c2, w3, b3, s3, c3, w4, b4):
    """EnergyMLP's (E, dE/dy) from x's projection, its weights and the layers' FiLM terms, explicitly.

    Forward:  a1 = P + W1y y,  P = W1x x + b1 (the condition's projection, computed once per x: `condition`),
              h1 = silu(a1)
              a2 = (W2 h1 + b2) s2 + c2,  h2 = silu(a2)     (s = 1 + FiLM gain, c = FiLM bias; folded into
              a3 = (W3 h2 + b3) s3 + c3,  h3 = silu(a3)      W and b at one level: s = None)
              o = W4 h3 + b4,  E = sum_j o_j^2
    Backward (the vector-Jacobian product with dE/dE = 1):
              dE/do = 2 o,  dE/da3 = (dE/do W4) * silu'(a3)
              dE/da2 = ((dE/da3 * s3) W3) * silu'(a2)
              dE/da1 = ((dE/da2 * s2) W2) * silu'(a1)
              dE/dy = dE/da1 W1y                              (fc1's y columns only: x's need no gradient)
    Only tensor ops that first-order autograd differentiates (w.r.t. the weights, the FiLM terms and P), and no
    Python state, so torch.compile can trace it whole. y is treated as a constant input.

    Matrix-product work per row, F and F1 as in the library's FLOP rule (ebmtool.method.compute, rule 2): F = the
    forward's products without x's share, so a call without a graph costs 2F; the denoising call with its
    backward 6F - F1 (F1 = fc1's y columns: y is no leaf, so their input gradient is not computed).
    """
    e, out, a1, a2, a3 = mlp_forward(proj, y, w1y, w2, b2, s2, c2, w3, b3, s3, c3, w4, b4)
    d = _silu_grad((2 * out) @ w4, a3)  # dE/da3
    d = _silu_grad((d if s3 is None else d * s3) @ w3, a2)  # dE/da2
    d = _silu_grad((d if s2 is None else d * s2) @ w2, a1)  # dE/da1
    return e, d @ w1y


_COMPILED: dict = {}


def compile_explicit(model: "EnergyMLP", enable: bool = True, **compile_kwargs) -> "EnergyMLP":
    """Make `model.energy_and_grad` (and so `diffusion.energy_and_grad`: training's denoising call, the sampler
    and descent) run `mlp_energy_and_grad` through torch.compile(**compile_kwargs) (default: inductor,
    dynamic=None). Returns the model, changed in place; enable=False restores the eager function.

    Only the explicit core is compiled: the condition's projection, the FiLM terms (a torch.unique over the
    levels on a CPU) and the call counters stay eager, and `model(x, y, t)` (the forward-only energy) is
    unchanged. The compiled function is shared by every model given the same kwargs (it takes the weights as
    arguments), so a deep copy (the EMA) compiles nothing new. The first calls of each new shape or gradient mode pay the compilation.
    """
    if not isinstance(model, EnergyMLP):
        raise TypeError(f"compile_explicit needs an EnergyMLP, not {type(model).__name__}")
    if not enable:
        model.__dict__.pop("_explicit_core", None)
        return model
    # the loop measures the energy term's gradient share on logging steps with retain_graph=True backward passes,
    # which a compiled backward with donated buffers refuses (torch's error message names this switch)
    torch._functorch.config.donated_buffer = False
    key = repr(sorted(compile_kwargs.items()))
    if key not in _COMPILED:
        _COMPILED[key] = torch.compile(mlp_energy_and_grad, **compile_kwargs)
    model.__dict__["_explicit_core"] = _COMPILED[key]
    return model


def build_model(dims: dict) -> nn.Module:
    """Rebuild a network from the `dims` recorded in a checkpoint (or returned by a task's model_dims)."""
    arch = dims.get("arch")
    if arch not in MODEL_BUILDERS:
        raise InputError(f"unknown model architecture {arch!r}; the known ones are {', '.join(MODEL_BUILDERS)}")
    return MODEL_BUILDERS[arch](dims)


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------------------------------------ discrete tasks

class _Counted(nn.Module):
    """Counts forward passes and rows, as EnergyMLP does (instrumentation for benchmarks and tests)."""

    def __init__(self):
        super().__init__()
        self.counter = CallCounter()

    def _count(self, y):
        self.counter.calls += 1
        self.counter.rows += y.shape[0]


class SudokuResBlock(nn.Module):
    """u = swish(conv5(h)); u = conv5(u) (weights ~ N(0, 1e-5): a block starts near the identity);
    u = swish(u (1 + gamma) + beta); h + u. No normalisation, no down-sampling."""

    def __init__(self, width: int, time_hidden: int):
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 5, padding=2)
        self.conv2 = nn.Conv2d(width, width, 5, padding=2)
        nn.init.normal_(self.conv2.weight, 0.0, 1e-5)
        self.film = nn.Linear(time_hidden, 2 * width)

    def forward(self, h, temb):
        gain, bias = self.film(temb)[:, :, None, None].chunk(2, dim=1)
        u = F.silu(self.conv1(h))
        u = self.conv2(u)
        return h + F.silu(u * (1 + gain) + bias)


class SudokuCNN(_Counted):
    """The release's Sudoku energy, only the parts it uses: conv3 (18 -> width) + swish, 6 residual
    blocks with time FiLM, conv1 (width -> 9), E = sum of squares. x and y are (B, 729) in (row, col, digit)
    order. 44,619,401 parameters at width 384 (the release registers 47,280,521 including unused layers)."""

    def __init__(self, width: int = 384, blocks: int = 6, time_dim: int = 128, time_hidden: int = 64):
        super().__init__()
        self.dims = {"arch": "sudoku_cnn", "x_dim": 729, "y_dim": 729, "width": width, "blocks": blocks,
                     "time_dim": time_dim, "time_hidden": time_hidden}
        self.conv_in = nn.Conv2d(18, width, 3, padding=1)
        self.blocks = nn.ModuleList(SudokuResBlock(width, time_hidden) for _ in range(blocks))
        self.conv_out = nn.Conv2d(width, 9, 1)
        self.time = TimeMLP(time_dim, time_hidden)

    def forward(self, x, y, t):
        self._count(y)
        b = y.shape[0]
        grid = torch.cat([x.reshape(b, 9, 9, 9), y.reshape(b, 9, 9, 9)], dim=-1).permute(0, 3, 1, 2)
        temb = self.time(t)
        h = F.silu(self.conv_in(grid))
        for block in self.blocks:
            h = block(h, temb)
        return self.conv_out(h).pow(2).sum(dim=(1, 2, 3))


register_model("sudoku_cnn", lambda d: SudokuCNN(d["width"], d["blocks"], d["time_dim"], d["time_hidden"]))


class GraphTime(nn.Module):
    """sinusoidal(512) -> Linear -> swish -> Linear, as the release's graph models."""

    def __init__(self, dim: int = 512, hidden: int = 32):
        super().__init__()
        self.dim = dim
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, hidden)

    def forward(self, t):
        return self.fc2(F.silu(self.fc1(sinusoidal_embedding(t, self.dim))))


class GraphEBM(_Counted):
    """Connectivity energy on binary predicates, a compact Neural-Logic-Machine-style network (not the
    release's NLM, whose exact layer layout is not reproduced; see `parameter_count`: 30,177 at the defaults
    against the release's 52,129).

    Per edge (i, j) the features [relation_ij, y_ij, t-emb(32)]. Each of `depth` layers forms, for every
    intermediate k != i, j, a projection of [h_ik, h_kj] (breadth 3: the ternary predicates transitivity
    needs) reduced by max and min over k, then h_ij <- swish(Linear[h_ij, h_ji, max_k, min_k]).
    Output Linear(hidden -> 1) per edge; E = sum over (i, j) of out^2. Works for any node count N."""

    def __init__(self, hidden: int = 32, depth: int = 2, time_dim: int = 512, x_channels: int = 1):
        super().__init__()
        self.dims = {"arch": "graph_nlm", "hidden": hidden, "depth": depth, "time_dim": time_dim,
                     "x_channels": x_channels}
        self.time = GraphTime(time_dim, 32)
        c = x_channels + 1 + 32
        self.ternary = nn.ModuleList()
        self.combine = nn.ModuleList()
        for _ in range(depth):
            self.ternary.append(nn.Linear(2 * c, hidden))
            self.combine.append(nn.Linear(2 * c + 2 * hidden, hidden))
            c = hidden
        self.out = nn.Linear(hidden, 1)

    def forward(self, x, y, t):
        self._count(y)
        b = y.shape[0]
        n = int(round(math.sqrt(y.shape[1])))
        xc = self.dims["x_channels"]
        temb = self.time(t)[:, None, None, :].expand(b, n, n, -1)
        h = torch.cat([x.reshape(b, n, n, xc), y.reshape(b, n, n, 1), temb], dim=-1)
        eye = torch.eye(n, dtype=torch.bool, device=y.device)
        # exclude k == i and k == j: (i, j, k) excluded where k equals either end. The exclusion is an added
        # -1e4 (max) / +1e4 (min) instead of a torch.where: the same maxima and minima (an excluded entry,
        # |z| << 1e4, never reaches them) and the same gradients (ties shared alike), without two full-size
        # selects and their backward.
        excl = (eye[:, None, :] | eye[None, :, :])[None, :, :, :, None].to(y.dtype) * 1e4
        for tern, comb in zip(self.ternary, self.combine):
            w_a, w_b = tern.weight.chunk(2, dim=1)
            left = h @ w_a.T  # h_ik projected, (b, i, k, hidden)
            right = h @ w_b.T  # h_kj projected, (b, k, j, hidden)
            z = left[:, :, None, :, :] + right.permute(0, 2, 1, 3)[:, None, :, :, :] + tern.bias  # (b, i, j, k, c)
            hi = (z - excl).amax(3)
            lo = (z + excl).amin(3)
            if n <= 2:  # no intermediate node: the reductions are empty
                hi, lo = torch.zeros_like(hi), torch.zeros_like(lo)
            h = F.silu(comb(torch.cat([h, h.transpose(1, 2), hi, lo], dim=-1)))
        return self.out(h).pow(2).sum(dim=(1, 2, 3))


register_model("graph_nlm", lambda d: GraphEBM(d["hidden"], d["depth"], d["time_dim"], d["x_channels"]))


class PathGNN(_Counted):
    """Shortest-path energy, the release's GNNConv1DEBMV2 layout (55,937 parameters at the defaults).

    y: (B, 8, N, 1) +-1 one-hot node per step, plus t-emb(32) -> 33 channels. Each block concatenates the
    temporal neighbours (t-1, t, t+1; zero padded), forms pair features [h_i, h_j, cond_ij, cond_ji] with the
    4-channel condition, Linear + swish, max over j. Linear(64 -> 1); E = sum over (step, node) of out, linear
    and so possibly negative. The pair Linear is applied as a sum of per-part products (same function, no
    (B, T, N, N, C_in) tensor)."""

    def __init__(self, hidden: int = 64, steps: int = 8, time_dim: int = 512):
        super().__init__()
        self.dims = {"arch": "path_gnn", "hidden": hidden, "steps": steps, "time_dim": time_dim}
        self.time = GraphTime(time_dim, 32)
        self.blocks = nn.ModuleList([nn.Linear(2 * 3 * 33 + 8, hidden), nn.Linear(2 * 3 * hidden + 8, hidden)])
        self.out = nn.Linear(hidden, 1)

    def forward(self, x, y, t):
        self._count(y)
        b, steps = y.shape[0], self.dims["steps"]
        n = y.shape[1] // steps
        cond = x.reshape(b, n, n, 4)
        pair_cond = torch.cat([cond, cond.transpose(1, 2)], dim=-1)  # (b, i, j, 8): cond_ij, cond_ji
        temb = self.time(t)[:, None, None, :].expand(b, steps, n, -1)
        h = torch.cat([y.reshape(b, steps, n, 1), temb], dim=-1)
        for lin in self.blocks:
            pad = F.pad(h, (0, 0, 0, 0, 1, 1))
            h = torch.cat([pad[:, :-2], pad[:, 1:-1], pad[:, 2:]], dim=-1)  # (b, T, N, 3C)
            c = h.shape[-1]
            w_i, w_j, w_c = lin.weight[:, :c], lin.weight[:, c:2 * c], lin.weight[:, 2 * c:]
            zi = h @ w_i.T  # (b, T, i, hidden)
            zj = h @ w_j.T  # (b, T, j, hidden)
            zc = pair_cond @ w_c.T + lin.bias  # (b, i, j, hidden)
            z = F.silu(zi[:, :, :, None, :] + zj[:, :, None, :, :] + zc[:, None])
            h = z.amax(3)
        return self.out(h).sum(dim=(1, 2, 3))


register_model("path_gnn", lambda d: PathGNN(d["hidden"], d["steps"], d["time_dim"]))
