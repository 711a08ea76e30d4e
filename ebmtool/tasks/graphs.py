"""Graph tasks: connectivity (transitive closure) and shortest path; generators and metrics, vectorised.

Graphs follow the reference's DNC construction: N nodes uniform in the unit
square, node i links to its k_i nearest other nodes with k_i ~ U{1..floor(N p)} drawn per node. Connectivity
symmetrises the edges; shortest path keeps them directed (i -> j at [i, j]). Closures and distances are batched
boolean matrix products (at most ceil(log2 N) squarings, or N-1 BFS frontier steps), never Python loops over
nodes.

Encodings (all +-1): connectivity x = adjacency (N, N, 1), y = closure (N, N) with the diagonal (always 1).
Shortest path x = (N, N, 4) [edges, start row, edges, goal row] where the "row" channel is 1 on the whole row
of that node (as the release's state), y = (8, N, 1): the node reached after step k = 1..8, padded with the goal.
"""

from __future__ import annotations

import numpy as np

PATH_STEPS = 8
PATH_DISTANCES = (4, 5, 6)


# ------------------------------------------------------------------------------------------------ graphs

def knn_graphs(rng: np.random.Generator, n: int, nodes: int, p: float, directed: bool) -> np.ndarray:
    """(n, N, N) bool adjacency: node i -> its k_i nearest nodes, k_i ~ U{1..max(1, floor(N p))}."""
    pos = rng.random((n, nodes, 2))
    d = ((pos[:, :, None, :] - pos[:, None, :, :]) ** 2).sum(-1)
    d[:, np.arange(nodes), np.arange(nodes)] = np.inf
    kmax = max(1, int(nodes * p))
    k = rng.integers(1, kmax + 1, size=(n, nodes))
    rank = np.argsort(np.argsort(d, axis=2, kind="stable"), axis=2, kind="stable")  # rank of j among i's others
    adj = rank < k[:, :, None]
    if not directed:
        adj = adj | adj.transpose(0, 2, 1)
    return adj


def closure(adj: np.ndarray) -> np.ndarray:
    """Reflexive transitive closure of a batch (n, N, N) by repeated squaring of (A or I)."""
    nodes = adj.shape[-1]
    r = adj.astype(np.float32) + np.eye(nodes, dtype=np.float32)
    r = (r > 0).astype(np.float32)
    for _ in range(int(np.ceil(np.log2(max(nodes, 2))))):
        r = ((r @ r) > 0).astype(np.float32)
    return r > 0


def distances(adj: np.ndarray) -> np.ndarray:
    """Shortest directed hop distances (n, N, N) by batched BFS (frontier = reached @ A); unreachable = -1."""
    n, nodes, _ = adj.shape
    a = adj.astype(np.float32)
    dist = np.full((n, nodes, nodes), -1, dtype=np.int64)
    reached = np.broadcast_to(np.eye(nodes, dtype=bool), (n, nodes, nodes)).copy()
    dist[reached] = 0
    frontier = reached.astype(np.float32)
    for step in range(1, nodes):
        nxt = ((frontier @ a) > 0) & ~reached
        if not nxt.any():
            break
        dist[nxt] = step
        reached |= nxt
        frontier = nxt.astype(np.float32)
    return dist


# ------------------------------------------------------------------------------------------------ connectivity

def connectivity(rng: np.random.Generator, n: int, nodes: int = 12, p: float = 0.1):
    """(x, y): adjacency and closure, +-1, flattened to (n, N*N)."""
    adj = knn_graphs(rng, n, nodes, p, directed=False)
    reach = closure(adj)
    x = (2.0 * adj - 1).reshape(n, -1).astype(np.float32)
    y = (2.0 * reach - 1).reshape(n, -1).astype(np.float32)
    return x, y


def connectivity_metrics(y: np.ndarray, y_hat: np.ndarray) -> dict:
    """Per-graph sign accuracy (pred >= 0 = connected) with and without the diagonal, and balanced accuracy
    (mean of the true-positive and true-negative rates; a class absent from a graph counts as fully right)."""
    n = y.shape[0]
    nodes = int(round(np.sqrt(y.shape[1])))
    truth = y.reshape(n, nodes, nodes) > 0
    pred = np.asarray(y_hat).reshape(n, nodes, nodes) >= 0
    right = pred == truth
    off = ~np.eye(nodes, dtype=bool)
    pos, neg = truth.sum((1, 2)), (~truth).sum((1, 2))
    tpr = np.where(pos > 0, (right & truth).sum((1, 2)) / np.maximum(pos, 1), 1.0)
    tnr = np.where(neg > 0, (right & ~truth).sum((1, 2)) / np.maximum(neg, 1), 1.0)
    return {"accuracy": right.mean((1, 2)), "accuracy_offdiag": right[:, off].mean(1),
            "balanced_accuracy": (tpr + tnr) / 2, "graph_exact": right.all((1, 2)).astype(np.float64)}


# ------------------------------------------------------------------------------------------------ shortest path

def shortest_path(rng: np.random.Generator, n: int, nodes: int = 20, p: float = 0.5,
                  dist_choices: tuple[int, ...] = PATH_DISTANCES):
    """(x, y, info) for n instances. A graph without a (start, goal) pair at the drawn distance is redrawn
    (as the release does). The oracle path picks uniformly among out-neighbours one step closer to the goal."""
    want = rng.choice(np.asarray([d for d in dist_choices if d <= nodes - 1]), size=n)
    adj = np.zeros((n, nodes, nodes), dtype=bool)
    dist = np.zeros((n, nodes, nodes), dtype=np.int64)
    todo = np.arange(n)
    while todo.size:
        a = knn_graphs(rng, todo.size, nodes, p, directed=True)
        d = distances(a)
        ok = (d == want[todo, None, None]).any((1, 2))
        adj[todo[ok]], dist[todo[ok]] = a[ok], d[ok]
        todo = todo[~ok]
    # (start, goal) uniformly among the pairs at the wanted distance
    pairs = (dist == want[:, None, None]).reshape(n, -1)
    pick = np.argmax(np.where(pairs, rng.random(pairs.shape), -1.0), axis=1)
    start, goal = pick // nodes, pick % nodes
    rows = np.arange(n)
    to_goal = dist[rows, :, goal]  # (n, N): distance of every node to the goal
    path = np.empty((n, PATH_STEPS), dtype=np.int64)
    cur = start.copy()
    for s in range(PATH_STEPS):
        closer = adj[rows, cur] & (to_goal == (to_goal[rows, cur] - 1)[:, None]) & (to_goal >= 0)
        at_goal = cur == goal
        nxt = np.argmax(np.where(closer, rng.random(closer.shape), -1.0), axis=1)
        cur = np.where(at_goal, goal, nxt)
        path[:, s] = cur
    x = _path_condition(adj, start, goal)
    y = np.full((n, PATH_STEPS, nodes), -1.0, dtype=np.float32)
    y[rows[:, None], np.arange(PATH_STEPS)[None, :], path] = 1.0
    info = {"start": start, "goal": goal, "distance": want, "path": path}
    return x, y.reshape(n, -1), info


def _path_condition(adj, start, goal):
    n, nodes, _ = adj.shape
    rows = np.arange(n)
    s_row = np.zeros((n, nodes, nodes), dtype=bool)
    g_row = np.zeros((n, nodes, nodes), dtype=bool)
    s_row[rows, start, :] = True
    g_row[rows, goal, :] = True
    x = np.stack([adj, s_row, adj, g_row], axis=-1)
    return (2.0 * x - 1).reshape(n, -1).astype(np.float32)


def decode_condition(x: np.ndarray, nodes: int):
    """(adjacency (n, N, N) bool, start (n,), goal (n,)) from the +-1 condition."""
    c = np.asarray(x).reshape(-1, nodes, nodes, 4) > 0
    return c[..., 0], c[..., 1].any(2).argmax(1), c[..., 3].any(2).argmax(1)


def path_metrics(x: np.ndarray, y: np.ndarray, y_hat: np.ndarray, nodes: int) -> dict:
    """Per-instance: first step exact, first step feasible (edge from start), feasible and strictly closer to
    the goal, step-wise accuracy, and success (following the argmax nodes, every move is an existing edge and
    the goal is reached within 8 steps; what follows the first arrival is not judged)."""
    n = x.shape[0]
    adj, start, goal = decode_condition(x, nodes)
    rows = np.arange(n)
    pred = np.asarray(y_hat).reshape(n, PATH_STEPS, nodes).argmax(-1)
    true = np.asarray(y).reshape(n, PATH_STEPS, nodes).argmax(-1)
    to_goal = distances(adj)[rows, :, goal]
    first = pred[:, 0]
    feasible = adj[rows, start, first]
    closer = feasible & (to_goal[rows, first] >= 0) & (to_goal[rows, first] < to_goal[rows, start])
    cur = start.copy()
    alive = np.ones(n, dtype=bool)
    reached = np.zeros(n, dtype=bool)
    for s in range(PATH_STEPS):
        nxt = pred[:, s]
        ok = reached | adj[rows, cur, nxt]  # moves after the goal is reached are not judged
        alive &= ok
        cur = np.where(alive, nxt, cur)
        reached |= alive & (cur == goal)
    return {"success_rate": (alive & reached).astype(np.float64),
            "first_step_accuracy": (first == true[:, 0]).astype(np.float64),
            "first_step_feasible": feasible.astype(np.float64),
            "first_step_closer": closer.astype(np.float64),
            "step_accuracy": (pred == true).mean(1)}
