"""One-line diagram layout of a radial feeder: where each bus and branch is drawn.

Used by the operator's live page and the report plots, so both show the feeder the same
way. The method is the usual one for distribution one-lines (a "tidy" tree drawing):

1. take the spanning tree of the in-service branches, rooted at the slack bus (breadth
   first, so a meshed feeder still gets a tree; the branches left out are drawn as
   chords);
2. from every bus, the child with the deepest subtree continues straight on (the main
   feeder runs left to right along one lane);
3. every other child starts a lateral on the next free lane below, one step to the right,
   so laterals hang under the bus they leave from and never cross the main feeder.

Coordinates are abstract grid units: ``x`` = steps from the substation along the drawn
path, ``y`` = lane. Out-of-service branches (normally-open ties) keep their end points and
are marked ``closed=False`` so a drawing can dash them. Islands not reached from the slack
are laid out the same way below everything else.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from estimator.network import Network

__all__ = ["BranchPlace", "BusPlace", "OneLine", "one_line"]


@dataclass(frozen=True)
class BusPlace:
    id: int  # external bus id
    x: int
    y: int
    depth: int  # branches between the bus and the slack along the tree


@dataclass(frozen=True)
class BranchPlace:
    name: str  # "f-t" in external ids
    f: int  # external from-bus id
    t: int  # external to-bus id
    closed: bool  # in service
    tree: bool  # part of the drawn tree (False: a tie/chord, drawn between its ends)


@dataclass(frozen=True)
class OneLine:
    buses: tuple[BusPlace, ...]  # in the network's bus order
    branches: tuple[BranchPlace, ...]  # in the network's branch order
    width: int  # x extent (max x + 1)
    lanes: int  # y extent (max y + 1)

    def as_dict(self) -> dict[str, object]:
        """JSON-ready form (the live page's ``/layout.json``)."""
        return {
            "width": self.width, "lanes": self.lanes,
            "buses": [{"id": b.id, "x": b.x, "y": b.y, "depth": b.depth} for b in self.buses],
            "branches": [{"name": r.name, "f": r.f, "t": r.t, "closed": r.closed,
                          "tree": r.tree} for r in self.branches],
        }


def one_line(net: Network) -> OneLine:
    """The diagram of ``net`` (see the module docstring for the rules)."""
    n = net.n_bus
    br = net.branches
    closed = np.asarray(br.in_service, bool)
    children, tree_edges = _spanning_tree(n, br.from_idx, br.to_idx, closed, net.slack)
    height = _subtree_height(children, n)
    # the deepest child first: it continues the line, the others become laterals
    kids = [sorted(c, key=lambda v: -int(height[v])) for c in children]
    x = np.full(n, -1, np.int64)
    y = np.full(n, -1, np.int64)
    depth = np.zeros(n, np.int64)
    next_lane = 0
    roots = [net.slack] + [i for i in range(n) if i != net.slack]
    for root in roots:
        if x[root] >= 0:
            continue
        next_lane = _place(root, 0, next_lane, kids, x, y, depth)
    ids = [int(b) for b in net.bus_ids]
    buses = tuple(BusPlace(ids[i], int(x[i]), int(y[i]), int(depth[i])) for i in range(n))
    branches = tuple(
        BranchPlace(br.names[k], ids[int(br.from_idx[k])], ids[int(br.to_idx[k])],
                    bool(closed[k]), k in tree_edges)
        for k in range(len(br)))
    return OneLine(buses, branches, int(x.max()) + 1, int(y.max()) + 1)


def _spanning_tree(n: int, f: np.ndarray, t: np.ndarray, closed: np.ndarray, root: int
                   ) -> tuple[list[list[int]], set[int]]:
    """Breadth-first tree over closed branches from ``root`` (children in branch order),
    plus the indices of the branches it uses. Unreached buses become roots later."""
    adj: list[list[tuple[int, int]]] = [[] for _ in range(n)]
    for k in np.flatnonzero(closed):
        a, b = int(f[k]), int(t[k])
        adj[a].append((b, int(k)))
        adj[b].append((a, int(k)))
    children: list[list[int]] = [[] for _ in range(n)]
    seen = np.zeros(n, bool)
    used: set[int] = set()
    for start in [root, *range(n)]:
        if seen[start]:
            continue
        seen[start] = True
        queue = deque([start])
        while queue:
            u = queue.popleft()
            for v, k in adj[u]:
                if not seen[v]:
                    seen[v] = True
                    children[u].append(v)
                    used.add(k)
                    queue.append(v)
    return children, used


def _subtree_height(children: list[list[int]], n: int) -> np.ndarray:
    """Longest path (in branches) from each bus down its subtree, without recursion."""
    height = np.zeros(n, np.int64)
    order: list[int] = []
    stack = [i for i in range(n)]
    seen = np.zeros(n, bool)
    while stack:  # post-order by an explicit stack: deep feeders need no recursion limit
        u = stack.pop()
        if u < 0:
            order.append(~u)
            continue
        if seen[u]:
            continue
        seen[u] = True
        stack.append(~u)
        stack.extend(c for c in children[u] if not seen[c])
    for u in order:
        if children[u]:
            height[u] = 1 + max(int(height[c]) for c in children[u])
    return height


def _place(root: int, x0: int, lane: int, kids: list[list[int]], x: np.ndarray,
           y: np.ndarray, depth: np.ndarray) -> int:
    """Lay out the subtree of ``root`` from (x0, lane); returns the next free lane.

    ``kids[u]`` lists u's children, deepest subtree first. A bus's deepest child
    continues on its lane and that child's whole block of lanes comes first; the other
    children (laterals) take the lanes below it, in the order they leave the bus.
    ``need[u]`` is the number of lanes the subtree of ``u`` occupies: need(leaf) = 1,
    need(u) = sum of need over its children."""
    need = _lanes_needed(root, kids)
    work = [(root, x0, lane, 0)]
    while work:  # an explicit work list: deep feeders need no recursion limit
        u, ux, uy, ud = work.pop()
        x[u], y[u], depth[u] = ux, uy, ud
        if not kids[u]:
            continue
        cursor = uy + need[kids[u][0]]
        work.append((kids[u][0], ux + 1, uy, ud + 1))
        for c in kids[u][1:]:
            work.append((c, ux + 1, cursor, ud + 1))
            cursor += need[c]
    return lane + need[root]


def _lanes_needed(root: int, kids: list[list[int]]) -> dict[int, int]:
    """need[u] for every bus of the subtree of ``root`` (post-order, no recursion)."""
    need: dict[int, int] = {}
    stack = [root]
    order: list[int] = []
    while stack:
        u = stack.pop()
        order.append(u)
        stack.extend(kids[u])
    for u in reversed(order):  # children before parents
        need[u] = 1 if not kids[u] else sum(need[c] for c in kids[u])
    return need
