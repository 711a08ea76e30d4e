"""Discrete tasks: generators are correct (against plain reference algorithms), metrics on hand-made answers,
negatives respect masks and never equal their positives, models have the reference sizes, determinism."""

from collections import deque

import numpy as np
import pytest
import torch

from ebmtool.method.diffusion import SamplerSettings, cosine_schedule, sample
from ebmtool.tasks import graphs, sudoku
from ebmtool.tasks import reference_negatives as negatives
from ebmtool.method.models import GraphEBM, PathGNN, SudokuCNN, build_model, parameter_count
from ebmtool.tasks.registry import get_task

SOLVED = np.array([int(c) for c in
                   "534678912672195348198342567859761423426853791713924856961537284287419635345286179"], np.int8)


# ------------------------------------------------------------------------------------------------ sudoku

@pytest.fixture(scope="module")
def puzzles():
    return sudoku.generate(12, np.random.default_rng(5))


def test_generated_sudoku_are_valid_and_uniquely_solvable(puzzles):
    p, s, target = puzzles
    assert sudoku.valid_boards(s).all()
    assert ((p == 0) | (p == s)).all()
    givens = (p > 0).sum(1)
    assert ((givens >= 30) & (givens <= 45)).all() and (givens >= target).all()
    for board, sol in zip(p, s):
        count, found = sudoku.count_solutions(board, limit=2)
        assert count == 1 and np.array_equal(found, sol)


def test_uniqueness_check_detects_a_second_solution():
    board = SOLVED.copy()
    # a deadly pattern: swapping 2 digits in a 2x2 rectangle spanning two boxes keeps the grid valid
    grid = board.reshape(9, 9)
    found = None
    for a in range(9):
        for b in range(a + 1, 9):
            if a // 3 != b // 3:
                continue
            for c in range(9):
                for d in range(c + 1, 9):
                    if c // 3 == d // 3 or grid[a, c] != grid[b, d] or grid[a, d] != grid[b, c]:
                        continue
                    found = (a, b, c, d)
    assert found is not None
    a, b, c, d = found
    holes = board.reshape(9, 9).copy()
    holes[[a, a, b, b], [c, d, c, d]] = 0
    count, _ = sudoku.count_solutions(holes.reshape(-1), limit=2)
    assert count == 2
    assert not sudoku.unique_by_propagation(holes.reshape(1, -1))[0]


def test_sudoku_generation_is_deterministic_by_seed():
    t = get_task("sudoku")
    a, b, c = (t.generate(3, "train", seed=s) for s in (1, 1, 2))
    assert np.array_equal(a.x, b.x) and np.array_equal(a.mask, b.mask) and not np.array_equal(a.y, c.y)
    assert np.array_equal(t.generate(2, "val").y, t.generate(2, "val").y)


def test_sudoku_encoding_and_mask_share_the_layout(puzzles):
    p, s, _ = puzzles
    x, y, m = sudoku.encode(p), sudoku.encode(s), sudoku.given_mask(p)
    assert x.shape == y.shape == m.shape == (12, 729)
    assert np.array_equal(sudoku.decode(y), s) and np.array_equal(sudoku.puzzles_from_x(x), p)
    assert np.array_equal(x[m > 0], y[m > 0])  # given entries of x are the solution's: y*(1-m)+m*x is y
    assert (x[m == 0] == -1).all()


def _one(board):
    return sudoku.encode(board[None])


def test_board_solved_metric_on_hand_made_boards():
    puzzle = SOLVED.copy()
    puzzle[::2] = 0  # givens at odd cells
    sol = SOLVED[None]
    solved = sudoku.metrics(puzzle[None], sol, _one(SOLVED))
    assert solved["board_solved"][0] == 1 and solved["cell_accuracy"][0] == 1 and solved["exact_match"][0] == 1
    wrong = SOLVED.copy()
    wrong[0] = 1 if wrong[0] != 1 else 2  # one wrong empty cell
    m = sudoku.metrics(puzzle[None], sol, _one(wrong))
    assert m["board_solved"][0] == 0 and m["exact_match"][0] == 0
    assert m["cell_accuracy"][0] == pytest.approx(1 - 1 / (puzzle == 0).sum())
    # a valid grid that changes a given: relabel digits 1<->2 everywhere (still a valid grid)
    relabelled = np.where(SOLVED == 1, 2, np.where(SOLVED == 2, 1, SOLVED)).astype(np.int8)
    assert sudoku.valid_boards(relabelled[None])[0]
    m = sudoku.metrics(puzzle[None], sol, _one(relabelled), unique=False)
    assert m["board_solved"][0] == 0 and m["givens_kept"][0] == 0
    # a sum check (rows/cols/boxes summing to 45) would accept this non-permutation; board_solved does not
    fake = np.full(81, 5, np.int8)
    assert not sudoku.valid_boards(fake[None])[0]


def test_sudoku_metrics_cover_every_board(puzzles):
    p, s, _ = puzzles
    y_hat = sudoku.encode(s)
    y_hat[3] = sudoku.encode(np.roll(s[3], 1)[None])[0]  # one bad board in the batch
    m = sudoku.metrics(p, s, y_hat)
    assert m["board_solved"].shape == (12,) and m["board_solved"].sum() == 11 and m["board_solved"][3] == 0


def test_loaders_read_csv_and_numpy(tmp_path, puzzles):
    p, s, _ = puzzles
    path = tmp_path / "rrn.csv"
    text = lambda b: "".join(str(v) if v else "." for v in b)
    lines = ["quizzes,solutions"] + [f"{text(a)},{text(b)}" for a, b in zip(p, s)]
    path.write_text("\n".join(lines) + "\n")
    lp, ls = sudoku.load_csv(path)
    assert np.array_equal(lp, p) and np.array_equal(ls, s)
    onehot = lambda b: (b[..., None] == np.arange(1, 10)).astype(np.float32).reshape(-1, 9, 9, 9)
    np.save(tmp_path / "features.npy", onehot(p))
    np.save(tmp_path / "labels.npy", onehot(s))
    fp, fs = sudoku.load_satnet_npy(tmp_path / "features.npy", tmp_path / "labels.npy")
    assert np.array_equal(fp, p) and np.array_equal(fs, s)
    sudoku.check_puzzles(fp, fs, "x")
    bad = fs.copy()
    bad[0, :2] = bad[0, 1::-1]
    from ebmtool.runtime.errors import InputError
    with pytest.raises(InputError):
        sudoku.check_puzzles(fp, bad, "x")


# ------------------------------------------------------------------------------------------------ graphs

def _floyd_warshall_closure(adj):
    n = len(adj)
    r = [[bool(adj[i][j]) or i == j for j in range(n)] for i in range(n)]
    for k in range(n):
        for i in range(n):
            for j in range(n):
                r[i][j] = r[i][j] or (r[i][k] and r[k][j])
    return np.array(r)


def test_connectivity_targets_equal_a_reference_closure():
    for nodes, p in ((12, 0.1), (12, 0.2), (20, 0.2)):
        x, y = graphs.connectivity(np.random.default_rng(nodes), 6, nodes, p)
        adj = x.reshape(6, nodes, nodes) > 0
        assert (adj == adj.transpose(0, 2, 1)).all() and not adj[:, np.arange(nodes), np.arange(nodes)].any()
        for a, target in zip(adj, y.reshape(6, nodes, nodes) > 0):
            assert np.array_equal(target, _floyd_warshall_closure(a))


def test_connectivity_metrics_and_balance():
    y = np.array([[1, -1, -1, 1]], np.float32)  # 2x2: diagonal connected, off-diagonal not
    m = graphs.connectivity_metrics(y, np.array([[1, 1, -1, 1]], np.float32))
    assert m["accuracy"][0] == 0.75 and m["accuracy_offdiag"][0] == 0.5
    assert m["balanced_accuracy"][0] == pytest.approx((1 + 0.5) / 2)


def _bfs(adj, s):
    dist = {s: 0}
    q = deque([s])
    while q:
        u = q.popleft()
        for v in np.flatnonzero(adj[u]):
            if v not in dist:
                dist[v] = dist[u] + 1
                q.append(v)
    return dist


def test_shortest_paths_are_shortest_and_feasible():
    nodes = 20
    x, y, info = graphs.shortest_path(np.random.default_rng(3), 12, nodes)
    adj, start, goal = graphs.decode_condition(x, nodes)
    assert np.array_equal(start, info["start"]) and np.array_equal(goal, info["goal"])
    steps = y.reshape(12, 8, nodes).argmax(-1)
    full = graphs.distances(adj)
    for i in range(12):
        d = _bfs(adj[i], start[i])
        assert d[goal[i]] == info["distance"][i] in (4, 5, 6)
        assert all(full[i, start[i], v] == dv for v, dv in d.items())
        cur = start[i]
        for k in range(info["distance"][i]):
            assert adj[i, cur, steps[i, k]]
            cur = steps[i, k]
        assert cur == goal[i] and (steps[i, info["distance"][i] - 1:] == goal[i]).all()
    m = graphs.path_metrics(x, y, y, nodes)
    assert all(v.mean() == 1 for v in m.values())


def test_path_metrics_on_hand_made_predictions():
    nodes = 20
    x, y, info = graphs.shortest_path(np.random.default_rng(4), 8, nodes)
    adj, start, goal = graphs.decode_condition(x, nodes)
    bad = y.reshape(8, 8, nodes).copy()
    non_edge = np.flatnonzero(~adj[0, start[0]] & (np.arange(nodes) != start[0]))[0]
    bad[0, 0] = -1
    bad[0, 0, non_edge] = 1
    m = graphs.path_metrics(x, y, bad.reshape(8, -1), nodes)
    assert m["first_step_feasible"][0] == 0 and m["success_rate"][0] == 0 and m["first_step_accuracy"][0] == 0
    assert m["success_rate"][1:].all()


def test_graph_generation_is_deterministic():
    for name in ("connectivity", "connectivity-2", "shortest-path"):
        t = get_task(name)
        a, b, c = t.generate(4, "train", seed=1), t.generate(4, "train", seed=1), t.generate(4, "train", seed=2)
        assert np.array_equal(a.x, b.x) and np.array_equal(a.y, b.y) and not np.array_equal(a.x, c.x)
    h = get_task("connectivity").generate(3, "test", harder=True)
    assert h.x.shape == (3, 400) and h.description["size"] == 20


# ------------------------------------------------------------------------------------------------ negatives

def test_sudoku_negatives_keep_givens_and_are_never_the_positive():
    t = get_task("sudoku")
    p = t.generate(6, "train", seed=0)
    y, mask = torch.from_numpy(p.y).repeat(50, 1), torch.from_numpy(p.mask).repeat(50, 1)
    gen = torch.Generator().manual_seed(0)
    neg, n_same = t.reference_negative(y, mask, gen)
    assert torch.equal(neg[mask > 0], y[mask > 0])
    assert not (neg == y).all(1).any()
    assert 0 < n_same < 300  # P(identical) ~ (1 - 0.05*8/9)^free, about 0.1-0.3 here: some were re-drawn
    assert set(neg.unique().tolist()) == {-1.0, 1.0}
    assert (neg.reshape(-1, 81, 9) > 0).sum(-1).eq(1).all()
    neg2, n2 = t.reference_negative(y, mask, torch.Generator().manual_seed(0))
    assert torch.equal(neg, neg2) and n2 == n_same


def test_connectivity_negatives_reference_form_only_disconnects_and_flip_goes_both_ways():
    t = get_task("connectivity-2")
    y = torch.from_numpy(t.generate(64, "train", seed=0).y)
    neg, _ = t.reference_negative(y, None, torch.Generator().manual_seed(1))  # the default: the reference's form
    assert ((y > 0) & (neg < 0)).any() and not ((y < 0) & (neg > 0)).any()
    assert not (neg == y).all(1).any()
    neg, n_same = t.reference_negative(y, None, torch.Generator().manual_seed(1), connectivity_form="flip")
    assert ((y > 0) & (neg < 0)).any() and ((y < 0) & (neg > 0)).any()
    assert not (neg == y).all(1).any()
    mask = (torch.rand(y.shape, generator=torch.Generator().manual_seed(2)) < 0.5).float()
    for form in ("reference", "flip"):
        neg, _ = negatives.connectivity_negative(y, mask, torch.Generator().manual_seed(3), p=0.3, form=form)
        assert torch.equal(neg[mask > 0], y[mask > 0]) and not (neg == y).all(1).any()


def test_path_negatives_change_the_first_step_only_and_count_duplicates():
    t = get_task("shortest-path")
    y = torch.from_numpy(t.generate(400, "train", seed=0).y)
    neg, n_same = t.reference_negative(y, None, torch.Generator().manual_seed(0))
    a, b = y.reshape(400, 8, 20), neg.reshape(400, 8, 20)
    assert torch.equal(a[:, 1:], b[:, 1:]) and (a[:, 0].argmax(-1) != b[:, 0].argmax(-1)).all()
    assert 5 <= n_same <= 45  # about 1/N = 5 % of 400 first draws hit the true node


def test_a_negative_that_cannot_differ_is_an_error():
    y = torch.from_numpy(sudoku.encode(SOLVED[None]))
    with pytest.raises(ValueError):
        negatives.sudoku_negative(y, torch.ones_like(y), torch.Generator().manual_seed(0))


# ------------------------------------------------------------------------------------------------ models

def test_sudoku_cnn_parameter_count_and_forward():
    assert parameter_count(SudokuCNN(384)) == 44_619_401
    torch.manual_seed(0)
    m = SudokuCNN(width=8, blocks=2)
    x, y = torch.randn(2, 729), torch.randn(2, 729)
    out = []
    hook = m.conv_out.register_forward_hook(lambda mod, args, result: out.append(result))
    e = m(x, y, torch.tensor([0, 9]))
    hook.remove()
    assert e.shape == (2,) and m.counter.calls == 1
    # the energy is the sum of squares of the 9 output channels over the board, and it depends on y and on t
    assert out[0].shape == (2, 9, 9, 9) and torch.allclose(e, out[0].pow(2).sum(dim=(1, 2, 3)))
    assert not torch.allclose(m(x, -y, torch.tensor([0, 9])), e)
    assert not torch.allclose(m(x, y, torch.tensor([9, 0])), e)
    again = build_model(m.dims)
    again.load_state_dict(m.state_dict())
    assert torch.allclose(again(x, y, torch.tensor([0, 9])), e)


def test_graph_models_shapes_counts_and_rebuild():
    assert parameter_count(PathGNN()) == 55_937
    g, p = GraphEBM(), PathGNN()
    t = torch.tensor([1, 7])
    for model, x, y in ((g, torch.randn(2, 144), torch.randn(2, 144)), (g, torch.randn(2, 400), torch.randn(2, 400)),
                        (p, torch.randn(2, 1600), torch.randn(2, 160)), (p, torch.randn(2, 2500), torch.randn(2, 200))):
        e = model(x, y, t)
        assert e.shape == (2,)
        rebuilt = build_model(model.dims)
        rebuilt.load_state_dict(model.state_dict())
        assert torch.allclose(rebuilt(x, y, t), e)
    assert g.counter.calls == 2 and p.counter.calls == 2
    # the path energy is linear in its output: it can be negative
    assert get_task("shortest-path").model_dims()["arch"] == "path_gnn"


def test_connectivity_energy_depends_on_composition():
    """Permuting nodes consistently leaves the energy unchanged (a graph network), and y matters."""
    torch.manual_seed(0)
    g = GraphEBM()
    x, y = torch.randn(1, 144), torch.randn(1, 144)
    perm = torch.randperm(12)
    px = x.reshape(1, 12, 12)[:, perm][:, :, perm].reshape(1, -1)
    py = y.reshape(1, 12, 12)[:, perm][:, :, perm].reshape(1, -1)
    t = torch.tensor([3])
    assert torch.allclose(g(x, y, t), g(px, py, t), rtol=1e-4)
    assert not torch.allclose(g(x, y, t), g(x, -y, t))


# ------------------------------------------------------------------------------------------------ sampler + tasks

def test_sampler_never_changes_given_sudoku_cells():
    t = get_task("sudoku")
    p = t.generate(2, "train", seed=3)
    model = SudokuCNN(width=8, blocks=1)
    x, mask = torch.from_numpy(p.x), torch.from_numpy(p.mask)
    settings = SamplerSettings(inner_steps=1, x0_clamp=1.0, opt_clamp=1.0, opt_multiplier=1.0, post_clamp=1.0)
    y_hat = sample(model, x, cosine_schedule(), 729, settings, torch.Generator().manual_seed(0), mask=mask)
    assert torch.allclose(y_hat[mask > 0], x[mask > 0], atol=1e-5)
    m = t.metrics(p, y_hat.numpy())
    assert m["givens_kept"].all()


def test_task_attributes_follow_the_reference():
    s, c, c2, sp = (get_task(n) for n in ("sudoku", "connectivity", "connectivity-2", "shortest-path"))
    assert (s.energy_weight, c.energy_weight, sp.energy_weight) == (0.05, 0.05, 0.5)
    assert s.sampler.inner_steps == 20 and sp.sampler.post_clamp == 0.1 and c.sampler.x0_clamp == 1.0
    assert (s.metric, c.metric, sp.metric) == ("board_solved", "accuracy", "success_rate")
    assert all(t.higher_is_better for t in (s, c, c2, sp)) and not get_task("inverse").higher_is_better
    assert (s.x_dim, c.x_dim, sp.x_dim, sp.y_dim) == (729, 144, 1600, 160)
    base = c2.baselines(c2.generate(200, "val"))
    assert 0.3 < base["all connected"].mean() < 0.8


def test_data_command_caches_a_discrete_set_that_training_reads(runner, tmp_path):
    from ebmtool.cli import cli
    from ebmtool.tasks.files import resolve_task

    out = tmp_path / "s.h5"
    r = runner.invoke(cli, ["data", "sudoku", "-n", "4", "--seed", "1", "-o", str(out)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    task, problems = resolve_task(str(out))
    direct = get_task("sudoku").generate(4, "train", seed=1)
    assert task.name == "sudoku" and np.array_equal(problems.mask, direct.mask) and np.array_equal(problems.y, direct.y)
    r = runner.invoke(cli, ["data", "sudoku", "--size", "4", "-n", "2", "-o", str(tmp_path / "bad.h5")])
    assert r.exit_code == 2


def _graph_where_reference(m, x, y, t):
    """GraphEBM.forward as first written (torch.where exclusion), to pin the optimised forward to it."""
    import math

    from torch.nn import functional as F

    b = y.shape[0]
    n = int(round(math.sqrt(y.shape[1])))
    temb = m.time(t)[:, None, None, :].expand(b, n, n, -1)
    h = torch.cat([x.reshape(b, n, n, 1), y.reshape(b, n, n, 1), temb], dim=-1)
    eye = torch.eye(n, dtype=torch.bool)
    excl = (eye[:, None, :] | eye[None, :, :])[None, :, :, :, None]
    for tern, comb in zip(m.ternary, m.combine):
        w_a, w_b = tern.weight.chunk(2, dim=1)
        z = (h @ w_a.T)[:, :, None] + (h @ w_b.T).permute(0, 2, 1, 3)[:, None] + tern.bias
        hi = torch.where(excl, torch.tensor(-1e4), z).amax(3)
        lo = torch.where(excl, torch.tensor(1e4), z).amin(3)
        h = F.silu(comb(torch.cat([h, h.transpose(1, 2), hi, lo], dim=-1)))
    return m.out(h).pow(2).sum(dim=(1, 2, 3))


def test_graph_ebm_exclusion_by_addition_equals_the_where_version():
    """Same energies, input gradients and double-backprop parameter gradients, on binary inputs (many exact
    ties in the max/min over k, which both versions must share alike)."""
    from helpers import denoise_grads

    torch.manual_seed(0)
    m = GraphEBM(hidden=16, depth=2, time_dim=64)
    x = (torch.rand(6, 36) < 0.3).float()
    y0 = torch.where(torch.rand(6, 36) < 0.5, 1.0, -1.0)
    t = torch.tensor([0, 3, 9, 3, 1, 5])
    got = [denoise_grads(m, fn, x, y0, t, 0.5) for fn in (m, lambda *a: _graph_where_reference(m, *a))]
    (e1, g1, p1), (e2, g2, p2) = got
    assert torch.equal(e1, e2) and torch.allclose(g1, g2, atol=1e-6)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(p1, p2))
