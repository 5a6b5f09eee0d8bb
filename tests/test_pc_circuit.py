"""Tests of the compiled circuit (hmmlvd.pc.circuit and hmmlvd.pc.layers) against brute force.

Every tiny circuit (3-6 binary/ternary variables, every structure builder, both product layers,
categorical and Bernoulli inputs, K in {1, 2, 3}) is checked against

* its own full joint table: all assignments sum to 1, marginals with missing variables are sums
  of the joint, conditionals are ratios of such sums, batches do not interact;
* an independent float64 evaluator written here (``reference_log_likelihood``): a recursion
  over the *region graph* that reads the layers' documented weight tensors
  (einsum [P, K, K, K] = (out, left, right), Hadamard [E, K, K] = (parent, child), mixing
  [R, K, P_max], root [root_size, K]) and never the circuit's read plans, so a wrong index in
  the layer/plan bookkeeping changes its answer.

The helpers are imported by the other test_pc_* files.
"""

from __future__ import annotations

import functools
import itertools
import math

import numpy as np
import pytest
import torch

from hmmlvd.pc import Circuit, log_conditional, log_marginal
from hmmlvd.pc.structures import (
    Partition,
    RegionGraph,
    chain_region_graph,
    hclt_region_graph,
    poon_domingos,
    random_binary_trees,
)

# ----------------------------------------------------------------------------- structures


def random_tree(num_variables: int, seed: int) -> list[tuple[int, int]]:
    """A random labelled tree: vertex i > 0 (in a random order) attaches to an earlier one."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(num_variables)
    edges = []
    for i in range(1, num_variables):
        a, b = int(order[i]), int(order[int(rng.integers(0, i))])
        edges.append((min(a, b), max(a, b)))
    return sorted(edges)


def padded_graph() -> RegionGraph:
    """Binary partitions; one layer mixes a 3-partition and a 2-partition region (so the mixing
    layer pads), the root mixes 3 partitions whose children have different heights."""
    p = Partition
    parts = [
        p((0, 1, 2, 3), ((0, 1, 2), (3,))), p((0, 1, 2, 3), ((0,), (1, 2, 3))),
        p((0, 1, 2, 3), ((0, 1), (2, 3))),
        p((0, 1, 2), ((0,), (1, 2))), p((0, 1, 2), ((0, 1), (2,))), p((0, 1, 2), ((0, 2), (1,))),
        p((1, 2, 3), ((1,), (2, 3))), p((1, 2, 3), ((1, 2), (3,))),
        p((1, 2), ((1,), (2,))), p((0, 1), ((0,), (1,))), p((0, 2), ((0,), (2,))),
        p((2, 3), ((2,), (3,))),
    ]
    return RegionGraph.from_partitions(4, parts)


def kary_graph() -> RegionGraph:
    """Partitions of mixed arity (2 and 3), children not in variable order, a mixed root."""
    p = Partition
    parts = [
        p((0, 1, 2, 3), ((0,), (1,), (2, 3))), p((0, 1, 2, 3), ((0, 1), (2, 3))),
        p((0, 1, 2, 3), ((3,), (0, 2), (1,))),
        p((0, 1), ((1,), (0,))), p((2, 3), ((2,), (3,))), p((0, 2), ((0,), (2,))),
    ]
    return RegionGraph.from_partitions(4, parts)


STRUCTURES = {
    "pd2x2": lambda: poon_domingos(2, 2, 1),
    "pd2x3": lambda: poon_domingos(2, 3, 1),
    "rat3-1-1": lambda: random_binary_trees(3, 1, 1, seed=0),
    "rat4-2-3": lambda: random_binary_trees(4, 2, 3, seed=1),
    "rat5-2-2": lambda: random_binary_trees(5, 2, 2, seed=2),
    "rat5-1-3": lambda: random_binary_trees(5, 1, 3, seed=3),
    "hclt5": lambda: hclt_region_graph(random_tree(5, seed=0), root=1),
    "hclt4path": lambda: hclt_region_graph([(0, 2), (1, 2), (1, 3)], root=0),
    "chain4": lambda: chain_region_graph(4),
    "padded4": padded_graph,
    "kary4": kary_graph,
}


@functools.cache
def graph_of(name: str) -> RegionGraph:
    return STRUCTURES[name]()


def is_binary(graph: RegionGraph) -> bool:
    return all(len(p.children) == 2 for p in graph.partitions)


def all_cases() -> list[tuple[str, str, str, int]]:
    """(structure, product, input, K) for every structure x product x input x K."""
    cases = []
    for name in STRUCTURES:
        products = ["einsum", "hadamard"] if is_binary(graph_of(name)) else ["hadamard"]
        for product, kind, k in itertools.product(products, ["categorical", "bernoulli"],
                                                  [1, 2, 3]):
            cases.append((name, product, kind, k))
    return cases


CASES = all_cases()


def case_id(case) -> str:
    return "-".join(str(c) for c in case)


# ----------------------------------------------------------------------------- circuits


@torch.no_grad()
def peak_(circuit: Circuit, seed: int, sharpness: float = 1.5) -> Circuit:
    """Replace every parameter by a far-from-uniform one (softmax of scaled normals), keeping
    structural zeros, so that a transposed tensor or a wrong index changes the numbers."""
    gen = torch.Generator().manual_seed(seed)
    for layer in circuit.sum_layers():
        raw = sharpness * torch.randn(layer.log_weight.shape, generator=gen)
        if layer.valid is not None:
            raw = raw.masked_fill(~layer.valid, -math.inf)
        dims = layer.norm_dims
        layer.log_weight.copy_(raw - torch.logsumexp(raw, dim=dims, keepdim=True))
    inputs = circuit.input_layer
    if circuit.input_kind == "gaussian":
        inputs.mean.copy_(torch.rand(inputs.mean.shape, generator=gen))
        lo, hi = math.log(inputs.min_var), math.log(inputs.max_var)
        inputs.log_var.copy_(lo + (hi - lo) * torch.rand(inputs.log_var.shape, generator=gen))
    else:
        raw = sharpness * torch.randn(inputs.log_prob.shape, generator=gen)
        inputs.log_prob.copy_(raw - torch.logsumexp(raw, dim=1, keepdim=True))
    return circuit


def num_categories(kind: str) -> int:
    return 2 if kind == "bernoulli" else 3


def make_circuit(name: str, product: str, kind: str, k: int, seed: int = 0,
                 root_size: int = 1, **kwargs) -> Circuit:
    """A circuit over structure ``name`` with peaked random parameters."""
    circuit = Circuit(graph_of(name), k, input=kind, product=product, root_size=root_size,
                      num_categories=num_categories(kind) if kind == "categorical" else None,
                      seed=seed, **kwargs)
    return peak_(circuit, seed + 1000)


def all_assignments(num_variables: int, categories: int) -> torch.Tensor:
    """[C^D, D] every assignment, in row-major order (so a [C]*D table reshapes directly)."""
    return torch.tensor(list(itertools.product(range(categories), repeat=num_variables)),
                        dtype=torch.long).reshape(-1, num_variables)


@functools.cache
def case_data(case):
    """(circuit, all assignments [N, D], float64 joint table of shape [C] * D)."""
    name, product, kind, k = case
    circuit = make_circuit(name, product, kind, k, seed=CASES.index(case))
    c = num_categories(kind)
    x = all_assignments(circuit.num_variables, c)
    joint = circuit.log_likelihood(x).double().exp()
    return circuit, x, joint.reshape([c] * circuit.num_variables).numpy()


def brute_marginal(joint: np.ndarray, x: torch.Tensor, keep: torch.Tensor) -> np.ndarray:
    """log of the sum of ``joint`` over the variables not in ``keep`` [B, D], per row."""
    out = []
    for row, mask in zip(x.tolist(), keep.tolist(), strict=True):
        index = tuple(v if m else slice(None) for v, m in zip(row, mask, strict=True))
        out.append(math.log(joint[index].sum()))
    return np.array(out)


def random_rows(circuit: Circuit, categories: int, batch: int, seed: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Random data [B, D] and random missing masks [B, D] including the all-missing and
    none-missing rows."""
    gen = torch.Generator().manual_seed(seed)
    d = circuit.num_variables
    x = torch.randint(0, categories, (batch, d), generator=gen)
    missing = torch.rand(batch, d, generator=gen) < torch.rand(batch, 1, generator=gen)
    missing[0] = True
    missing[1] = False
    return x, missing


# ----------------------------------------------------------------------------- reference


def reference_parameters(circuit: Circuit, requires_grad: bool = False) -> dict:
    """float64 probabilities of every layer (leaf tensors, optionally requiring grad)."""

    def leaf(t: torch.Tensor) -> torch.Tensor:
        return t.detach().double().clone().requires_grad_(requires_grad)

    inputs = circuit.input_layer
    if circuit.input_kind == "gaussian":
        var = inputs.log_var.detach().double().exp().clamp(inputs.min_var, inputs.max_var)
        input_params = {"mean": leaf(inputs.mean), "var": leaf(var)}
    else:
        input_params = {"prob": leaf(inputs.log_prob.exp())}
    return {"input": input_params,
            "layers": [leaf(layer.log_weight.exp()) for layer in circuit.layers],
            "mixers": [leaf(m.log_weight.exp()) for m in circuit.mixers],
            "root": leaf(circuit.root_sum.log_weight.exp())}


def reference_log_likelihood(circuit: Circuit, x, missing=None, params=None) -> torch.Tensor:
    """float64 log p [B, root_size] by recursion over the region graph (probability space)."""
    params = reference_parameters(circuit) if params is None else params
    x = torch.as_tensor(x)
    b, d = x.shape
    observed = torch.ones(b, d, dtype=torch.bool) if missing is None else ~missing
    graph = circuit.graph
    partitions_of = graph.partitions_of()
    place = {}
    for layer, plan in enumerate(circuit.plans):
        for i, p in enumerate(plan.partitions):
            place[p] = (layer, i)
    assert set(place) == set(graph.partitions)
    inputs = circuit.input_layer
    entry_var, entry_leaf = inputs.entry_var.tolist(), inputs.entry_leaf.tolist()
    cache: dict = {}

    def leaf_value(region) -> torch.Tensor:
        pos = circuit.position[region]
        assert pos < inputs.num_leaves
        entries = [e for e in range(len(entry_var)) if entry_leaf[e] == pos]
        assert sorted(entry_var[e] for e in entries) == list(region)
        out = torch.ones(b, circuit.num_units, dtype=torch.float64)
        for e in entries:
            v = entry_var[e]
            if circuit.input_kind == "gaussian":
                mean, var = params["input"]["mean"][e], params["input"]["var"][e]
                value = torch.where(observed[:, v], x[:, v].double(), 0.0)[:, None]
                density = torch.exp(-0.5 * (value - mean) ** 2 / var) / torch.sqrt(
                    2 * math.pi * var)
            else:
                value = torch.where(observed[:, v], x[:, v].long(), 0)
                density = params["input"]["prob"][e][value]  # [B, K]
            out = out * torch.where(observed[:, v, None], density, 1.0)
        return out

    def partition_value(p: Partition) -> torch.Tensor:
        layer, i = place[p]
        weight = params["layers"][layer]
        if circuit.product == "einsum":
            left, right = value(p.children[0]), value(p.children[1])
            return torch.einsum("kij,bi,bj->bk", weight[i], left, right)
        plan = circuit.plans[layer]
        edge = sum(len(q.children) - 1 for q in plan.partitions[:i])
        out = value(p.children[0])
        for m, child in enumerate(p.children[1:]):
            out = out * (value(child) @ weight[edge + m].T)
        return out

    def value(region) -> torch.Tensor:
        if region in cache:
            return cache[region]
        parts = partitions_of[region]
        if not parts:
            out = leaf_value(region)
        elif len(parts) == 1:
            out = partition_value(parts[0])
        else:
            layer = place[parts[0]][0]
            plan = circuit.plans[layer]
            mixer_index = circuit.mixer_of[layer]
            mixer = circuit.mixers[mixer_index]
            m = circuit.position[region] - plan.start - plan.num_single
            weight = params["mixers"][mixer_index][m]  # [K, P_max]
            out, used = 0.0, []
            for s, slot in enumerate(mixer.slots[m].tolist()):
                if not bool(mixer.valid[m, 0, s]):
                    assert float(weight[:, s].detach().abs().max()) == 0.0
                    continue
                part = plan.partitions[slot]
                assert part.parent == region
                used.append(part)
                out = out + weight[:, s] * partition_value(part)
            assert len(used) == len(parts) and set(used) == set(parts)
        cache[region] = out
        return out

    return torch.log(value(graph.root) @ params["root"].T)


# ----------------------------------------------------------------------------- tests: joint


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_all_assignments_sum_to_one(case):
    circuit, x, joint = case_data(case)
    assert joint.sum() == pytest.approx(1.0, abs=2e-5)
    assert circuit.log_likelihood(x).shape == (len(x),)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_matches_reference_evaluator(case):
    circuit, x, joint = case_data(case)
    reference = reference_log_likelihood(circuit, x)[:, 0]
    assert float(reference.exp().sum()) == pytest.approx(1.0, abs=1e-5)  # the oracle itself
    np.testing.assert_allclose(np.log(joint.ravel()), reference.numpy(), rtol=0, atol=5e-5)
    rows, missing = random_rows(circuit, num_categories(case[2]), 24, seed=1)
    expected = reference_log_likelihood(circuit, rows, missing)[:, 0]
    np.testing.assert_allclose(circuit.log_likelihood(rows, missing).double().numpy(),
                               expected.numpy(), rtol=0, atol=5e-5)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_marginals_equal_brute_force_sums(case):
    circuit, _, joint = case_data(case)
    x, missing = random_rows(circuit, num_categories(case[2]), 40, seed=2)
    expected = brute_marginal(joint, x, ~missing)
    got = circuit.log_likelihood(x, missing).double().numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=5e-5)
    assert got[0] == pytest.approx(0.0, abs=1e-5)  # everything summed out
    np.testing.assert_allclose(log_marginal(circuit, x, missing).double().numpy(), expected,
                               rtol=0, atol=5e-5)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_conditionals_are_ratios(case):
    circuit, _, joint = case_data(case)
    gen = torch.Generator().manual_seed(3)
    x, _ = random_rows(circuit, num_categories(case[2]), 30, seed=3)
    role = torch.randint(0, 3, x.shape, generator=gen)  # 0: query, 1: evidence, 2: neither
    role[:, 0] = 0  # at least one queried variable
    query, evidence = role == 0, role == 1
    expected = brute_marginal(joint, x, query | evidence) - brute_marginal(joint, x, evidence)
    got = log_conditional(circuit, x, query, evidence).double().numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)
    # evidence defaults to the complement of the query; a [D] query broadcasts over the batch
    query_1d = torch.zeros(circuit.num_variables, dtype=torch.bool)
    query_1d[-1] = True
    expected = np.log(joint[tuple(x.T.tolist())]) - brute_marginal(
        joint, x, ~query_1d.expand(x.shape))
    got = log_conditional(circuit, x, query_1d).double().numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)


@pytest.mark.parametrize("case", CASES[::3], ids=case_id)
def test_log_likelihood_independent_of_batch_composition(case):
    circuit, x_all, _ = case_data(case)
    x, missing = random_rows(circuit, num_categories(case[2]), 12, seed=4)
    whole = circuit.log_likelihood(x, missing)
    single = torch.cat([circuit.log_likelihood(x[i:i + 1], missing[i:i + 1])
                        for i in range(len(x))])
    torch.testing.assert_close(single, whole, rtol=0, atol=1e-5)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(circuit.log_likelihood(x[perm], missing[perm]), whole[perm],
                               rtol=0, atol=1e-5)
    # padded with other (complete) samples, on both sides
    mixed_x = torch.cat([x_all[:7], x, x_all[-5:]])
    mixed_missing = torch.cat([torch.zeros(7, x.shape[1], dtype=torch.bool), missing,
                               torch.zeros(5, x.shape[1], dtype=torch.bool)])
    torch.testing.assert_close(circuit.log_likelihood(mixed_x, mixed_missing)[7:-5], whole,
                               rtol=0, atol=1e-5)


def test_structures_cover_what_they_claim():
    """The case list really contains mixing with padding, k-ary partitions and multi-variable
    leaves (otherwise the tests above would not exercise them)."""
    padded = Circuit(padded_graph(), 2, input="bernoulli")
    assert any(not bool(m.valid.all()) for m in padded.mixers)
    assert not is_binary(graph_of("hclt5")) and not is_binary(graph_of("kary4"))
    assert any(len(leaf) > 1 for name in STRUCTURES for leaf in graph_of(name).leaves())
    assert any(len(ps) >= 3 for ps in graph_of("pd2x3").partitions_of().values())


# ----------------------------------------------------------------------------- Gaussian


def single_leaf_graph(num_variables: int = 1) -> RegionGraph:
    return RegionGraph.from_partitions(num_variables, [],
                                       extra_regions=[tuple(range(num_variables))])


GAUSSIAN_GRAPHS = {"leaf1": lambda: single_leaf_graph(1), "chain2": lambda: chain_region_graph(2),
                   "leaf2": lambda: single_leaf_graph(2)}


def gaussian_circuit(name: str, product: str, k: int, seed: int) -> Circuit:
    circuit = Circuit(GAUSSIAN_GRAPHS[name](), k, input="gaussian", product=product, seed=seed,
                      min_var=4e-3, max_var=0.05)
    return peak_(circuit, seed)


@pytest.mark.parametrize(("name", "product", "k"),
                         [("leaf1", "einsum", 3), ("chain2", "einsum", 2),
                          ("chain2", "hadamard", 3), ("leaf2", "hadamard", 2)])
def test_gaussian_integrates_to_one(name, product, k):
    circuit = gaussian_circuit(name, product, k, seed=k)
    grid = torch.linspace(-1.5, 2.5, 401)
    if circuit.num_variables == 1:
        density = circuit.log_likelihood(grid[:, None]).double().exp()
        total = torch.trapezoid(density, grid.double())
    else:
        xs = torch.cartesian_prod(grid, grid)
        density = circuit.log_likelihood(xs).double().exp().reshape(len(grid), len(grid))
        inner = torch.trapezoid(density, grid.double(), dim=1)  # integrate x1 out
        total = torch.trapezoid(inner, grid.double())
        # the marginal of x0 computed by the circuit equals the numerical integral over x1
        x0 = torch.stack([grid, torch.full_like(grid, math.nan)], 1)
        marginal = circuit.log_likelihood(x0, torch.isnan(x0)).double().exp()
        torch.testing.assert_close(marginal, inner, rtol=2e-3, atol=1e-3)
    assert float(total) == pytest.approx(1.0, abs=2e-3)
    # summing out everything gives log 1, whatever the (NaN) placeholders
    nothing = torch.full((3, circuit.num_variables), math.nan)
    torch.testing.assert_close(circuit.log_likelihood(nothing, torch.isnan(nothing)),
                               torch.zeros(3), rtol=0, atol=1e-6)


@pytest.mark.parametrize(("name", "product"),
                         [("pd2x2", "einsum"), ("rat5-2-2", "hadamard"), ("kary4", "hadamard"),
                          ("padded4", "einsum")])
def test_gaussian_matches_reference(name, product):
    circuit = make_circuit(name, product, "gaussian", 3, seed=5, min_var=1e-3, max_var=0.1)
    gen = torch.Generator().manual_seed(6)
    x = torch.rand(20, circuit.num_variables, generator=gen)
    missing = torch.rand(x.shape, generator=gen) < 0.3
    expected = reference_log_likelihood(circuit, x, missing)[:, 0]
    np.testing.assert_allclose(circuit.log_likelihood(x, missing).double().numpy(),
                               expected.numpy(), rtol=1e-5, atol=1e-4)


# ----------------------------------------------------------------------------- sizes


def structural_zeros(graph: RegionGraph, k: int) -> int:
    """Padding of the mixing layers, from the graph alone: in each topological layer every
    region with several partitions gets P_max slots, P_max the layer's largest count."""
    partitions_of = graph.partitions_of()
    zeros = 0
    for layer in graph.topological_layers():
        counts = [len(partitions_of[r]) for r in dict.fromkeys(p.parent for p in layer)]
        counts = [c for c in counts if c > 1]
        if counts:
            zeros += sum(max(counts) - c for c in counts) * k
    return zeros


@pytest.mark.parametrize(("name", "product", "kind", "k", "root_size"),
                         [("pd2x3", "einsum", "categorical", 3, 1),
                          ("padded4", "einsum", "bernoulli", 2, 2),
                          ("padded4", "hadamard", "gaussian", 3, 1),
                          ("kary4", "hadamard", "categorical", 2, 3),
                          ("chain4", "hadamard", "bernoulli", 1, 1)])
def test_num_parameters_is_numel_minus_structural_zeros(name, product, kind, k, root_size):
    circuit = make_circuit(name, product, kind, k, root_size=root_size)
    numel = sum(p.numel() for p in circuit.parameters())
    zeros = structural_zeros(circuit.graph, k)
    if name == "padded4":
        assert zeros > 0
    assert circuit.num_parameters() == numel - zeros
    assert zeros == sum(int(torch.isneginf(m.log_weight).sum()) for m in circuit.mixers)
    assert f"{circuit.num_parameters():,} parameters" in circuit.summary()


def test_num_nodes_hand_count_einsum():
    # PD 2x2, K = 2: 4 single-pixel leaves (8 input components); 4 partitions of the 1x2 / 2x1
    # regions + 2 of the root = 6 partitions, each K*K = 4 products and K = 2 sums; the root
    # region has 2 partitions, so a mixing sum per unit (2); 1 root sum.
    circuit = Circuit(poon_domingos(2, 2, 1), 2, input="bernoulli", product="einsum")
    assert circuit.num_nodes() == {"input": 8, "product": 24, "sum": 6 * 2 + 2 + 1}
    assert "47 nodes" in circuit.summary()


def test_num_nodes_hand_count_hadamard():
    # kary4, K = 2: 4 leaves (8 input components); partitions (0,1), (2,3), (0,2) and 3 of the
    # root: 6 element-wise products of K = 2; non-first children: 1 + 1 + 1 + (2 + 1 + 2) = 8
    # edges of K = 2 sums each; the root mixes its 3 partitions (2 sums); 1 root sum.
    circuit = Circuit(kary_graph(), 2, input="categorical", num_categories=3,
                      product="hadamard")
    assert circuit.num_nodes() == {"input": 8, "product": 12, "sum": 16 + 2 + 1}
    # a chain of 3 with K = 3: 3 leaves, 2 partitions with one edge each, no mixing, 2 roots
    chain = Circuit(chain_region_graph(3), 3, input="bernoulli", product="hadamard",
                    root_size=2)
    assert chain.num_nodes() == {"input": 9, "product": 6, "sum": 6 + 2}
