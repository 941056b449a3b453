"""bench.py: the lecture's results, measured on your own machine.

    python bench.py                        # every section
    python bench.py --quick                # a reduced run of every section, for CI
    python bench.py --seed 1 --json bench.json --plot bench.png
    python bench.py --markdown bench.json  # the README's results tables, from a record
    python bench.py --jobs 1               # in one process (default: one worker per CPU; the same numbers)

Sections: 1. compounding error on the road (BC ~ eps T^2, DAgger ~ eps T), 2. what each expert label buys,
3. expressive heads on multimodal demonstrations (the tree), 4. every head on continuous control (a
pendulum), 5. memory (causal confusion, a non-Markovian expert, a cue beyond any window), 6. action chunks,
7. hindsight relabeling, 8. learning without the expert's actions, 9. third-person imitation, 10. imitation
and RL, 11. speed. Every figure is printed beside what it is compared against; every target is marked PASS
or MISS. Each section's function says in its docstring what the section shows and why.
"""

import argparse
import contextlib
import io
import json
import math
import multiprocessing
import os
import subprocess
import sys
import time
from dataclasses import replace

# One BLAS thread per process, set before numpy loads OpenBLAS: the bench runs one worker per core itself, and its
# matmuls are small. Two workers with a BLAS thread pool each on 2 cores wait on each other (7 min for --quick).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

import imitate as im

ROAD_MOVES = np.arange(-2.0, 3.0)  # the road's actions: hard left .. hard right


def say(*args):
    print(*args, flush=True)


def target(ok, text):
    return f"{'PASS' if ok else 'MISS'}  {text}"


# ---- 1. compounding error, and what each expert label buys ----

ROAD = dict(eps=0.005, lanes=3)  # the reading of the turn errs with probability 0.005
METHODS = ["bc", "bc_side_cameras", "dagger", "hg_dagger", "dart", "active_dagger"]
ROUNDS, SIDE, MEMBERS, MEMBER_WIDTHS, QUERY_THRESHOLD, QUERY_SHARE = 4, 1, 4, (16, 16), 0.02, 16


def road_method(name, T, budget, seed, rng, train):
    """One method trained on the road at horizon T on about `budget` expert labels (synthetic ones count).
    Returns the policy to evaluate (an interactive method's best iterate), the labels used, and the Result."""
    n = max(budget // (ROUNDS * T), 1)  # rollouts per round: ROUNDS n T = budget labels
    env, drive = im.Road(n, T, seed=seed, **ROAD), im.Road(4 * n, T, seed=seed, **ROAD)  # drive: labels on queries only
    cfg = im.DaggerConfig(rounds=ROUNDS, horizon=T, train=train, val_seed=seed + 7)
    policy = im.Policy(im.CategoricalHead(ROAD_MOVES), env.obs_dim, np.random.default_rng(seed))

    def demos(labels):
        demo_env = im.Road(max(labels // T, 1), T, seed=seed, **ROAD)
        return demo_env, im.rollout(demo_env, None, T, rng, expert=demo_env.expert, beta=1.0, seed=seed + T).pairs()

    if name in ("bc", "bc_side_cameras"):
        demo_env, (obs, actions) = demos(budget if name == "bc" else budget // (1 + 2 * SIDE))
        if name == "bc_side_cameras":  # 2 SIDE synthetic views of every demonstrated state, labelled by the expert
            synthetic = demo_env.side_cameras(obs, actions, SIDE)
            obs, actions = np.concatenate([obs, synthetic[0]]), np.concatenate([actions, synthetic[1]])
        im.bc(policy, obs, actions, rng, train)
        return policy, len(obs), None
    if name == "dagger":
        result = im.dagger(policy, env, env.expert, rng, cfg)
    elif name == "dart":
        result = im.dart(policy, env, env.expert, 0.5, rng, cfg)
    elif name == "hg_dagger":  # from a quarter of the budget in demonstrations, then takeovers
        result = im.hg_dagger(policy, drive, drive.expert, drive.unsafe, *demos(budget // 4)[1], rng, cfg)
    else:  # active DAgger: from 1/32 of the budget in demonstrations, then at most 1/16 per round in queries. The
        # learner errs only w.p. eps per step, so it drives 1024 episodes a round to find uncertain states; its
        # members are narrow (16x16), since wide ones trained on the road alone agree off it (see the README)
        heads = [
            im.Policy(policy.head, env.obs_dim, np.random.default_rng(seed + k), hidden=MEMBER_WIDTHS)
            for k in range(MEMBERS)
        ]
        first, queries, drive = (
            demos(budget // 32)[1],
            max(budget // QUERY_SHARE, 1),
            im.Road(1024, T, seed=seed, **ROAD),
        )
        result = im.active_dagger(im.Ensemble(heads), drive, drive.expert, *first, QUERY_THRESHOLD, queries, rng, cfg)
    return result.best, len(result.obs), result


def lookup(policy, lanes=ROAD["lanes"]):
    """policy.act on the road by table lookup: its observations take only 3 (2 lanes + 1) values, so evaluating
    131,072 episodes costs the world's kernel alone. The same actions as policy.act row by row."""
    moves = policy.act(im.road_features(lanes))  # (n_obs, 1)
    # an observation's row in the table, (x + lanes) 3 + r + 1, as one dot product: the one-hot reading gives r + 1,
    # the thermometer features x (each of the first `lanes` is x >= k, each of the last x <= -k)
    row = np.concatenate([np.arange(3), np.full(lanes, 3), np.full(lanes, -3)]).astype(np.float32)

    def act(obs):
        return moves[(obs @ row).astype(np.int64) + 3 * lanes]

    return act


def road_cost(env, act, T, seed):
    """Each episode's total cost on the road: rollout(env, act, T, rng, seed=seed).total_cost, number for number
    (the same kernel, the same random numbers; no road episode ends before T), without recording trajectories,
    which at 131,072 episodes cost three times the world itself. A stateful act (action chunks) is reset once, as
    rollout does where every episode begins."""
    obs, _ = env.reset(seed=seed)
    if hasattr(act, "reset"):
        act.reset(np.ones(env.num_envs, bool))
    total = np.zeros(env.num_envs, np.float32)
    for _ in range(T):
        obs, reward, *_ = env.step(act(obs))
        total -= reward
    return total


def compounding(seed, quick, figure):
    """Every method on the road, each on the same budget of expert labels at every horizon T; eps stays fixed
    across the sweep (it is the world's reading noise).

    What it shows. BC never saw the roadside: after its first misreading it stays off the road and follows the
    "tightrope" curve sum_t [1 - (1 - eps)^t] ~ eps T (T + 1) / 2, under both of the lecture's bounds (slope
    ~1.9 on log-log axes). Everything that sees recoveries learns the way back and sits at the floor eps T (a
    learner that reads the turn errs with probability eps at every step, whatever it learned): DAgger,
    HG-DAgger and DART by interaction or noise, BC with side cameras from two synthetic views of every
    demonstrated state (offsets of one lane, labelled with the expert's correction there), and active DAgger
    by asking only where its ensemble disagrees. Each cost is the mean over the same evaluation episodes for
    every method (common random numbers), and road_exact_cost's exact J must fall inside the simultaneous
    (Bonferroni) 95% intervals; errors in shared episodes are shared by every method, so misses come in groups."""
    budget, horizons = 16384, [4, 8, 16, 32]
    episodes = 1 << (13 if quick else 17)  # evaluation episodes per T, the same ones for every method
    train = im.TrainConfig(steps=150 if quick else 300, lr=3e-3)
    rng = np.random.default_rng(seed)
    out = {k: {"cost": [], "ci": [], "exact": [], "boot": [], "labels": []} for k in METHODS}
    alpha = 0.05 / (len(METHODS) * len(horizons))  # Bonferroni: 95% for all (method, T) intervals at once
    eps_hat, takeover_labels, table = [], [], im.road_features(ROAD["lanes"])
    for T in horizons:
        runs = {k: road_method(k, T, budget, seed, rng, train) for k in METHODS}
        takeover_labels.append(runs["hg_dagger"][1] - budget // 4)  # beyond its demonstrations
        held_env = im.Road((1 << 20 if not quick else 1 << 15) // T, T, **ROAD)  # fresh expert states per T
        held_out = im.rollout(held_env, None, T, rng, expert=held_env.expert, beta=1.0, seed=seed + 99 + T)
        obs, label = held_out.pairs()
        wrong = np.abs(lookup(runs["bc"][0])(obs) - label) > 0.5  # BC's 0-1 error on expert states (policy.act's)
        eps_hat.append(float(np.mean(wrong)))
        evaluation = im.Road(episodes, T, **ROAD)
        for k, (policy, labels, _) in runs.items():
            cost = road_cost(evaluation, lookup(policy), T, seed + 1000 + T)  # common random numbers
            ci, boot = im.bootstrap_ci(cost, rng, n_boot=4000)
            exact = im.road_exact_cost(im.road_move_probs(policy.act(table)), T, **ROAD)[-1]
            for key, value in (("cost", cost.mean()), ("ci", ci), ("exact", exact), ("boot", boot), ("labels", labels)):
                out[k][key].append(value)
        say(f"  T = {T:>2}: " + "  ".join(f"{k} {out[k]['cost'][-1]:.4f}" for k in METHODS))
    figure["road32"] = runs  # the largest budget of the next section's label curve
    e = float(np.mean(eps_hat))
    Ts = np.array(horizons, float)
    record = {
        "T": horizons,
        "eps": e,
        "eps_reading": ROAD["eps"],
        "eps_per_T": eps_hat,
        "bound_lecture": (e * Ts + 2 * e * Ts**2).tolist(),  # sum_t (eps + 2 eps t) = eps T^2 + 2 eps T <= this
        "bound_ross": (e * Ts**2).tolist(),  # Ross & Bagnell 2010: T^2 eps
        "tightrope": [float(sum(1 - (1 - e) ** t for t in range(1, T + 1))) for T in horizons],
        "methods": {},
    }
    for k in METHODS:
        slopes = im.loglog_slope(Ts, np.stack(out[k]["boot"], 1))  # one slope per bootstrap replicate
        record["methods"][k] = {
            "cost": [float(c) for c in out[k]["cost"]],
            "ci": [[float(a), float(b)] for a, b in out[k]["ci"]],
            "ci_simultaneous": [np.quantile(b, [alpha / 2, 1 - alpha / 2]).tolist() for b in out[k]["boot"]],
            "exact": [float(x) for x in out[k]["exact"]],
            "slope": float(im.loglog_slope(Ts, out[k]["cost"])),
            "slope_ci": np.quantile(slopes, [0.025, 0.975]).tolist(),
            "expert_labels": int(max(out[k]["labels"])),
            **({"takeover_labels_per_T": takeover_labels} if k == "hg_dagger" else {}),
            "expert_labels_per_T": [int(x) for x in out[k]["labels"]],
        }
    return record


def labels(seed, quick, figure):
    """Cost against the expert labels each method used, on the road at T = 32 (section 1's runs are the largest
    budget); and DAgger's own argument: per round, the total-variation distance between the learner's state
    distribution (exact, by the forward recursion; the offset x, time-averaged) and its aggregated data's.

    What it shows. More of the same does not help: BC's cost does not move over a 64x larger budget, since no
    demonstration leaves the road (its policy is the same function of what it meets at every budget, so the
    common evaluation episodes give the same number to the last digit). Recoveries are what a label buys: side
    cameras and DART are near the floor with a few hundred labels, because each of their labels can be a
    recovery; interactive methods first need enough rollouts to run into trouble. Active DAgger reaches
    DAgger's cost on a sixth of its labels, at the price of K = 4 networks trained every round; its members
    are narrow (16x16), since wide members trained on the road alone agree off it, and it scores the spread
    of the members' mean actions, not of their argmax (members that pick the same move can still differ in
    how sure they are). Its curve need not be monotone: the queries follow where the members happen to
    disagree."""
    # quick: the two ends of the sweep only (BC's target compares them; the active DAgger target reads the last)
    T, budgets, lanes = 32, [256, 16384] if quick else [256, 1024, 4096, 16384], ROAD["lanes"]
    train, rng = im.TrainConfig(steps=150 if quick else 300, lr=3e-3), np.random.default_rng(seed + 1)
    evaluation, table = im.Road(2048 if quick else 8192, T, **ROAD), im.road_features(lanes)
    methods = {k: {"labels": [], "cost": [], "ci": []} for k in METHODS}
    for budget in budgets:
        for k in METHODS:
            run = figure["road32"][k] if budget == budgets[-1] else road_method(k, T, budget, seed, rng, train)
            cost = road_cost(evaluation, lookup(run[0]), T, seed + 2000)  # common random numbers
            methods[k]["labels"].append(int(run[1]))
            methods[k]["cost"].append(float(cost.mean()))
            methods[k]["ci"].append(im.bootstrap_ci(cost, rng)[0].tolist())
        say(f"  budget {budget:>5}: " + "  ".join(f"{k} {methods[k]['cost'][-1]:.3f}" for k in METHODS))
    result, tv = figure["road32"]["dagger"][2], []
    for policy, entry in zip(result.iterates, result.log):
        _, d = im.road_exact_cost(im.road_move_probs(policy.act(table)), T, **ROAD, distribution=True)
        data = result.obs[: entry["data"]]  # the aggregated data this iterate was trained on
        x = (data[:, 3 : 3 + lanes].sum(1) - data[:, 3 + lanes :].sum(1)).astype(int)  # offsets, from the thermometer
        tv.append(float(0.5 * np.abs(d.mean(0) - np.bincount(x + lanes, minlength=2 * lanes + 1) / len(x)).sum()))
    figure["labels"] = {"T": T, "budgets": budgets, "methods": methods, "dagger_tv": tv}
    return figure["labels"]


def report_labels(r):
    say(f"\n  cost at T = {r['T']} (95% CI) against the expert labels used, at budgets {r['budgets']}")
    for k, m in r["methods"].items():
        cells = [f"{n:>6} {c:.3f} [{lo:.3f}, {hi:.3f}]" for n, c, (lo, hi) in zip(m["labels"], m["cost"], m["ci"])]
        say(f"  {k:<16}" + "  ".join(cells))
    say(
        "  DAgger per round, TV(learner's offsets, aggregated data's): " + ", ".join(f"{x:.3f}" for x in r["dagger_tv"])
    )
    m = r["methods"]
    dagger_cost, dagger_labels = m["dagger"]["cost"][-1], m["dagger"]["labels"][-1]
    reached = [n for n, c in zip(m["active_dagger"]["labels"], m["active_dagger"]["cost"]) if c <= 1.1 * dagger_cost]
    bc_move = abs(m["bc"]["cost"][-1] - m["bc"]["cost"][0]) / m["bc"]["cost"][0]
    tv = r["dagger_tv"]
    return [
        target(
            bool(reached) and reached[0] <= dagger_labels / 4,
            f"active DAgger within 10% of DAgger's cost {dagger_cost:.3f} with {reached[0] if reached else '-'} labels "
            f"(<= a quarter of DAgger's {dagger_labels})",
        ),
        target(tv[-1] < tv[0], f"DAgger's TV distance to its own data shrinks: {tv[0]:.3f} -> {tv[-1]:.3f}"),
        target(
            bc_move < 0.25,
            f"64x more demonstrations move BC's cost by {bc_move:.0%} (< 25%): more of the same does not cure it",
        ),
    ]


def report_compounding(r):
    say(f"\n  eps = {r['eps']:.4f}: BC's 0-1 error on held-out expert states (reading error {r['eps_reading']})")
    names = "".join(f"{k.replace('_', ' ')[:10]:>11}" for k in r["methods"])
    say(f"  {'T':>4} {'eps T + 2 eps T^2':>18} {'T^2 eps':>9} {'tightrope':>10}  {names}")
    for i, T in enumerate(r["T"]):
        costs = "".join(f"{m['cost'][i]:>11.4f}" for m in r["methods"].values())
        say(f"  {T:>4} {r['bound_lecture'][i]:>18.4f} {r['bound_ross'][i]:>9.4f} {r['tightrope'][i]:>10.4f}  {costs}")
    say(f"\n  {'method':<16} {'T':>3} {'cost J':>8} {'95% CI':>18} {'exact J':>8}")
    for k, m in r["methods"].items():
        for i, T in enumerate(r["T"]):
            lo, hi = m["ci"][i]
            say(f"  {k:<16} {T:>3} {m['cost'][i]:>8.4f} [{lo:>7.4f}, {hi:>7.4f}] {m['exact'][i]:>8.4f}")
    say(f"\n  {'method':<16} {'log-log slope':>14} {'95% CI':>16} {'expert labels':>14}")
    for k, m in r["methods"].items():
        lo, hi = m["slope_ci"]
        say(f"  {k:<16} {m['slope']:>14.2f} [{lo:>6.2f},{hi:>6.2f}] {m['expert_labels']:>14}")
    hg = r["methods"]["hg_dagger"]
    takeover = hg["takeover_labels_per_T"]
    demos = hg["expert_labels_per_T"][-1] - takeover[-1]
    say(f"  (hg_dagger: {demos} labels of first-round demonstrations, then {', '.join(map(str, takeover))} takeover")
    say(f"   labels at T = {', '.join(map(str, r['T']))}. Slope CIs resample evaluation episodes, policies fixed.)")
    m = r["methods"]
    pairs = [(ci, sim, x) for mm in m.values() for ci, sim, x in zip(mm["ci"], mm["ci_simultaneous"], mm["exact"])]
    inside = sum(lo <= x <= hi for (lo, hi), _, x in pairs)
    inside_all = all(lo <= x <= hi for _, (lo, hi), x in pairs)
    below = all(c < min(a, b) for c, a, b in zip(m["bc"]["cost"], r["bound_lecture"], r["bound_ross"]))
    hg_reaches = m["hg_dagger"]["cost"][-1] <= m["dagger"]["cost"][-1] * 1.1 + 1e-3  # within 10% at the longest T
    fewer = m["hg_dagger"]["expert_labels"] < m["dagger"]["expert_labels"]
    return [
        target(m["bc"]["slope"] >= 1.8, f"BC's slope {m['bc']['slope']:.2f} >= 1.8"),
        target(m["dagger"]["slope"] <= 1.2, f"DAgger's slope {m['dagger']['slope']:.2f} <= 1.2"),
        target(m["hg_dagger"]["slope"] <= 1.3, f"HG-DAgger's slope {m['hg_dagger']['slope']:.2f} <= 1.3"),
        target(below, "BC's measured cost below eps T + 2 eps T^2 and T^2 eps at every T"),
        target(inside_all, f"exact J in simultaneous 95% intervals at all (method, T); {inside}/{len(pairs)} in plain"),
        target(hg_reaches and fewer, "HG-DAgger reaches DAgger's cost (within 10% at the longest T) with fewer labels"),
        target(
            m["bc_side_cameras"]["slope"] <= 1.3,
            f"BC with side cameras: slope {m['bc_side_cameras']['slope']:.2f} <= 1.3 (no interactive expert)",
        ),
    ]


# ---- 3. multimodal demonstrations ----


def fork_metrics(sample, obs, actions, threshold=0.1, window=0.05, repeats=32):
    """How a head samples where the demonstrations part. The fork pairs are those on the centre line (x == 0
    exactly: every demonstration runs straight up it until its swerve begins, and the mirror keeps it there) whose
    sideways action is at least `threshold` (nearer the start of the swerve the two modes merge into straight
    ahead). fork_w1: the 1-D Wasserstein distance between the sideways parts of the head's samples at the fork pairs
    (`repeats` each) and of the demonstrations' actions there; fork_midpoint: the share of samples within `window`
    of the midpoint 0. The demonstrations themselves score 0 and 0."""
    fork = (obs[:, 0] == 0) & (np.abs(actions[:, 0]) >= threshold)
    s = np.clip(sample(np.repeat(obs[fork], repeats, 0))[:, 0], -1, 1)  # as the environment executes it
    a = np.repeat(actions[fork, 0], repeats)
    w1 = float(np.abs(np.sort(s) - np.sort(a)).mean())  # equal sizes: W1 is the mean gap between sorted samples
    return {"fork_w1": w1, "fork_midpoint": float(np.mean(np.abs(s) < window)), "fork_pairs": int(fork.sum())}


def principal_spread(actions, k):
    """k points on the demonstrated actions' first principal axis, from one standard deviation below their mean to
    one above: distinct starting means for a mixture's components (MixtureHead's means)."""
    mean = actions.mean(0)
    _, sv, vt = np.linalg.svd(actions - mean, full_matrices=False)
    return mean + np.linspace(-1, 1, k)[:, None] * (sv[0] / np.sqrt(len(actions))) * vt[0]


def multimodal(seed, quick, figure):
    """Each head trained by BC on the tree's bimodal demonstrations, then run with sampled actions.
    The task is left-right symmetric, so every demonstration is added with its mirror image: the data hold
    both sides exactly equally (a sampled imbalance of a few percent tilts L2's conditional mean, and the
    L2 policy, unstable on the centre line, follows the tilt round the tree).

    What it shows. L2 learns the conditional mean, straight ahead, and drives into the tree; the sampling
    heads pass it on both sides in about equal shares. At the fork (the demonstrated states on the centre
    line where the expert already swerves by 0.1 or more) fork_w1 compares the sideways part of each head's
    samples with the demonstrations', and fork_midpoint is the share within 0.05 of straight ahead. What it
    took: the mixture's components start apart along the actions' principal axis (from a random output layer
    one component wins everywhere); the diffusion head's noisy action is scaled up beside the x100
    observations (with Adam an input's scale is also its learning rate), its schedule is shifted to the
    modes' scale, and it samples with 20 DDIM steps. The CVAE succeeds but its z does not pick the side: the
    state tells the side everywhere except at the fork, so the ELBO leaves z unused there, and KL warm-up or
    an aggregate-posterior (MMD) term leave a hole between the two posterior clusters that prior draws land
    in. Two caveats: L2 given the same sharp inputs (l2_sharp) breaks the tie with its own approximation
    error and goes round, nearly always on one side; and the unimodal Gaussian passes too, because its
    sampling breaks the tie, while at the fork it is one hump (no single Gaussian does better than W1 0.058)."""
    rng = np.random.default_rng(seed)
    demo_env, held_env = im.Tree(256), im.Tree(128)
    demos = im.rollout(demo_env, None, 40, rng, expert=demo_env.expert, beta=1.0, seed=seed)
    held_out = im.rollout(held_env, None, 40, rng, expert=held_env.expert, beta=1.0, seed=seed + 1)
    obs, actions = demos.pairs()
    mirror = np.float32([-1, 1])  # x -> -x
    obs, actions = np.concatenate([obs, obs * mirror]), np.concatenate([actions, actions * mirror])
    bounds = ([-1, -1], [1, 1])
    heads = {  # head, hidden widths, activation, gradient steps, scale of the network's input, step size
        "l2": (im.L2Head(2), (256, 256), "relu", 3000, 1, 1e-3),
        # Sharp inputs: the side is told by the sign of x at a scale of 0.01, which tanh units on x100 inputs
        # resolve. The expressive heads need that to commit; L2 given the same breaks the tie at the centre
        # line with its own approximation error and goes round: shown, not hidden, as "l2_sharp".
        "l2_sharp": (im.L2Head(2), (256, 256), "tanh", 3000, 100, 1e-3),
        # The sampling heads: narrower networks, more and larger steps. Where the demonstrations part (x = 0, y in
        # (-0.9, -0.8]) lies between the straight approach below and the committed swerves beside and above it,
        # and resolving it takes updates, not width. The mixture's components start apart (collapse otherwise);
        # the diffusion head shifts its schedule to the fork's scale, lets its noisy-action input be heard, and
        # samples with 20 DDIM steps (with 10, its coarse first-order steps tilt the split between the two modes).
        "gaussian": (im.GaussianHead(2), (128, 128), "tanh", 6000, 100, 2e-3),
        "mog": (im.MixtureHead(2, 5, means=principal_spread(actions, 5)), (128, 128), "tanh", 8000, 100, 2e-3),
        "autoregressive": (im.AutoregressiveHead(*bounds, bins=21), (128, 128), "tanh", 6000, 100, 2e-3),
        "diffusion": (
            im.DiffusionHead(*bounds, sample_steps=20, shift=8, input_scale=10),
            (128, 128, 128),
            "tanh",
            12000,
            100,
            2e-3,
        ),
        # The CVAE's decoder sigma floor is 0.05: with 0.018 (its default e^-4) it lost success on some seeds
        "cvae": (im.CVAEHead(2, latent_dim=1, log_std_min=-3.0), (128, 128), "tanh", 6000, 100, 2e-3),
    }
    evaluation = im.Tree(256 if quick else 1000)
    probe = np.tile(np.float32([[0.0, -0.8]]), (4096, 1))  # the centre line, where the demonstrations part
    record, samples = {}, {}
    for name, (head, hidden, activation, steps, scale, lr) in heads.items():
        policy = im.Policy(head, 2, np.random.default_rng(seed), hidden=hidden, activation=activation)
        scale, steps = np.float32(scale), steps // 8 if quick else steps
        start = time.perf_counter()
        im.bc(policy, obs * scale, actions, rng, im.TrainConfig(steps=steps, lr=lr))
        train_seconds = time.perf_counter() - start

        def act(o, policy=policy, scale=scale):
            return policy.sample(o * scale, rng)

        act(probe[:16])  # warm-up
        start = time.perf_counter()
        samples[name] = act(probe)
        per_action = (time.perf_counter() - start) / len(probe)
        traj = im.rollout(evaluation, act, 40, rng, seed=seed + 2)
        y, x = traj.observations[:, :, 1], traj.observations[:, :, 0]
        crossed = (y >= 0).any(1)  # which side it passed on: x where it first reached the tree's line
        side = x[np.arange(len(x)), (y >= 0).argmax(1)][crossed]
        held_obs, held_actions = held_out.pairs()
        nll = None if name == "diffusion" else float(-policy.log_prob(held_obs * scale, held_actions).mean())
        record[name] = {
            "success": float(traj.success.mean()),
            "left": float(np.mean(side < 0)) if crossed.any() else None,
            "nll": nll,
            "train_seconds": train_seconds,
            "seconds_per_action": per_action,
            "network": f"{len(hidden)}x{hidden[0]} {activation}, inputs x{scale:g}, {steps} steps, lr {lr:g}",
        }
        fork_rng = np.random.default_rng(seed + 3)  # its own stream: training and rollouts stay as they were
        record[name] |= fork_metrics(lambda o, p=policy, c=scale, g=fork_rng: p.sample(o * c, g), obs, actions)
        if name == "cvae":
            record[name]["z_consistency"], record[name]["z_left"] = z_consistency(policy, scale, seed)
        say(f"  {name:<15} success {record[name]['success']:.3f}  trained in {train_seconds:.1f} s")
    figure["samples"] = samples
    return record


def z_consistency(policy, scale, seed, latents=16, episodes=64):
    """The lecture's claim that z selects the mode: draw `latents` z's from the prior, hold each fixed over
    `episodes` starts (acting with the decoder at that z), and average over z the share of its episodes that
    pass the tree on its majority side. And the share of z's whose majority is left: a policy that ignored z
    and always went one way would score 1 on consistency and 0 or 1 here."""
    rng, head = np.random.default_rng(seed + 4), policy.head
    z = np.repeat(rng.standard_normal((latents, head.latent_dim), dtype=np.float32), episodes, 0)  # one per row

    def act(o):
        return head.decoder.sample(head.decode(policy.net, policy.params, o * scale, z)[0], rng)

    traj = im.rollout(im.Tree(latents * episodes), act, 40, rng, seed=seed + 5)
    y, x = traj.observations[:, :, 1], traj.observations[:, :, 0]
    crossed = (y >= 0).any(1).reshape(latents, episodes)  # only episodes that reached the tree's line pick a side
    went_left = (x[np.arange(len(x)), (y >= 0).argmax(1)] < 0).reshape(latents, episodes)
    left = (went_left & crossed).sum(1) / np.maximum(crossed.sum(1), 1)
    return float(np.maximum(left, 1 - left)[crossed.any(1)].mean()), float(np.mean(left[crossed.any(1)] > 0.5))


def report_multimodal(r):
    say(
        f"\n  {'head':<15}{'success':>8}{'left':>7}{'fork W1':>9}{'midpoint':>9}{'held-out NLL':>14}{'train s':>9}"
        f"{'us/action':>11}  network"
    )
    for k, m in r.items():
        nll = "-" if m["nll"] is None else f"{m['nll']:.2f}"
        left = "-" if m["left"] is None else f"{m['left']:.2f}"
        per_action = 1e6 * m["seconds_per_action"]
        row = f"{m['success']:>8.3f}{left:>7}{m['fork_w1']:>9.3f}{m['fork_midpoint']:>9.3f}{nll:>14}"
        say(f"  {k:<15}{row}{m['train_seconds']:>9.1f}{per_action:>11.1f}  {m['network']}")
    pairs = next(iter(r.values()))["fork_pairs"]
    say(f"  (fork: the {pairs} demonstration pairs at x = 0 with a sideways action >= 0.1; W1 of the sideways part")
    say("   against the demonstrations' there, and the share of samples within 0.05 of 0. The demonstrations: 0, 0.)")
    lines = [
        target(r["l2"]["success"] <= 0.10, f"L2 success {r['l2']['success']:.3f} <= 0.10 (it drives into the tree)")
    ]
    for k in ("mog", "autoregressive", "diffusion", "cvae"):
        ok = r[k]["success"] >= 0.95 and r[k]["left"] is not None and 0.35 <= r[k]["left"] <= 0.65
        lines.append(
            target(ok, f"{k} success {r[k]['success']:.3f} >= 0.95, left share {r[k]['left'] or 0:.2f} in [0.35, 0.65]")
        )
        w1, mid = r[k]["fork_w1"], r[k]["fork_midpoint"]
        lines.append(
            target(w1 <= 0.05 and mid <= 0.1, f"{k} at the fork: W1 {w1:.3f} <= 0.05, midpoint {mid:.3f} <= 0.10")
        )
    zc, zl = r["cvae"]["z_consistency"], r["cvae"]["z_left"]
    lines.append(
        target(
            zc >= 0.9 and 0.35 <= zl <= 0.65,
            f"cvae: a z held fixed keeps to one side in {zc:.2f} of its episodes (>= 0.90), and {zl:.2f} of z's go "
            "left (in [0.35, 0.65])",
        )
    )
    return lines


# ---- 4. continuous control: the pendulum ----


LABELS, ROUNDS, EPISODES = 4000, 4, 128  # expert labels for BC and for DAgger; DAgger's rounds; evaluation episodes
SCALE = np.float32([1, 1, 0.25])  # the network sees (cos th, sin th, th_dot / 4): inputs of unit scale
BOUNDS = ([-2.0], [2.0])


class Scaled(im.Pendulum):
    """The pendulum as the policies see it (the expert reads the true state either way)."""

    def observe(self):
        return super().observe() * SCALE


def control_heads():
    """head, hidden widths, gradient steps (BC; DAgger retrains half as many per round, warm-started), step size."""
    return {
        "l2": (im.L2Head(1), (64, 64), 1500, 3e-3),
        # one log sigma for all states: a learned sigma(s) lets the mean stop learning where sigma(s) is large
        "gaussian": (im.GaussianHead(1, shared_std=True), (64, 64), 1500, 3e-3),
        # and a floor of sigma = e^-2: the expert's torque sits exactly at +-2 in a tenth of the states, and
        # components narrowed onto those two values would otherwise win the likelihood and the argmax
        "mog": (im.MixtureHead(1, 5, log_std_min=-2.0, shared_std=True), (64, 64), 1500, 3e-3),
        # label smoothing over ordered bins (a logistic of scale 0.6 around each label, clipped): 90% of the labels
        # are the balanced pendulum's u = 0, and with one-hot targets that bin wins wherever data are sparse, so the
        # policy idles near the top while the expert's steep ramp brakes at full torque (one-hot: BC -562)
        "autoregressive": (im.AutoregressiveHead(*BOUNDS, bins=41, smoothing=0.6), (64, 64), 1500, 3e-3),
        "diffusion": (im.DiffusionHead(*BOUNDS), (64, 64), 1500, 3e-3),
        # the decoder's log sigma one parameter, as the Gaussian's (a decoder sigma(s) stops its mean learning: BC
        # -1388); and beta 8: with sigma at its floor the encoder otherwise passes each label's residual through z,
        # the decoder leans on it, and z = 0 decodes a worse mean (beta 1: BC -519, beta 4: -173, seed 2: -614)
        "cvae": (im.CVAEHead(1, latent_dim=1, beta=8.0, log_std_min=-2.0, shared_std=True), (64, 64), 1500, 3e-3),
    }


def control(seed, quick, figure):
    """Each head trained by BC on LABELS expert labels (LABELS / 200 demonstrations), and by DAgger on the same
    number (ROUNDS rounds of LABELS / (200 ROUNDS) episodes; the first round the expert's), then run with its
    deterministic action (policy.act) from EPISODES common random starts."""
    rng = np.random.default_rng(seed)
    rounds, episodes = (2, 32) if quick else (ROUNDS, EPISODES)  # quick: fewer rollouts of 200 steps
    evaluation = Scaled(episodes, seed=seed + 1)

    def evaluate(act):
        traj = im.rollout(evaluation, act, 200, rng, seed=seed + 2)  # the same starts for every policy
        returns = -traj.total_cost
        ci, _ = im.bootstrap_ci(returns, rng)
        return {"return": float(returns.mean()), "return_ci": [float(c) for c in ci]}

    expert = evaluate(lambda obs: evaluation.expert())
    demo_env = Scaled(LABELS // 200, seed=seed)
    obs, actions = im.rollout(demo_env, None, 200, rng, expert=demo_env.expert, beta=1.0, seed=seed + 3).pairs()
    record = {"expert": expert, "labels": len(obs), "heads": {}}
    for name, (head, hidden, steps, lr) in control_heads().items():
        steps = steps // 8 if quick else steps
        train = im.TrainConfig(steps=steps, lr=lr)
        row = {}
        policy = im.Policy(head, 3, np.random.default_rng(seed), hidden=hidden)
        start = time.perf_counter()
        im.bc(policy, obs, actions, rng, train)
        row["bc_train_seconds"] = time.perf_counter() - start
        start = time.perf_counter()
        row["bc"] = evaluate(policy.act)
        row["eval_seconds"] = time.perf_counter() - start
        policy = im.Policy(head, 3, np.random.default_rng(seed), hidden=hidden)
        env = Scaled(LABELS // (200 * rounds), seed=seed + 4)
        retrain = im.TrainConfig(steps=steps // 2, lr=lr)  # per round, warm-started
        cfg = im.DaggerConfig(rounds=rounds, horizon=200, train=retrain, val_seed=seed + 5)
        start = time.perf_counter()
        result = im.dagger(policy, env, env.expert, rng, cfg)
        row["dagger_train_seconds"] = time.perf_counter() - start
        row["dagger"] = evaluate(result.best.act) | {"labels": len(result.obs)}
        row["network"] = f"{len(hidden)}x{hidden[0]}, {steps} steps, lr {lr:g}"
        record["heads"][name] = row
        say(
            f"  {name:<15} BC {row['bc']['return']:8.1f}  DAgger {row['dagger']['return']:8.1f}  "
            f"trained in {row['bc_train_seconds']:.1f} + {row['dagger_train_seconds']:.1f} s"
        )
    return record


def report_control(r):
    e = r["expert"]["return"]
    say(
        f"\n  expert {e:.1f} [{r['expert']['return_ci'][0]:.1f}, {r['expert']['return_ci'][1]:.1f}]; "
        f"{r['labels']} labels each"
    )
    say(f"  {'head':<15}{'BC':>8}{'95% CI':>18}{'DAgger':>9}{'95% CI':>18}{'train s':>12}{'eval s':>8}  network")
    for k, m in r["heads"].items():
        b, d = m["bc"], m["dagger"]
        ci = [f"[{x['return_ci'][0]:.0f}, {x['return_ci'][1]:.0f}]" for x in (b, d)]
        seconds = f"{m['bc_train_seconds']:.1f}+{m['dagger_train_seconds']:.1f}"
        say(
            f"  {k:<15}{b['return']:>8.1f}{ci[0]:>18}{d['return']:>9.1f}{ci[1]:>18}"
            f"{seconds:>12}{m['eval_seconds']:>8.2f}  {m['network']}"
        )
    lines, l2 = [], r["heads"]["l2"]["bc"]["return"]
    for k, m in r["heads"].items():
        d = m["dagger"]["return"]
        lines.append(target(d >= e - 0.15 * abs(e), f"{k} DAgger {d:.1f} within 15% of the expert's {e:.1f}"))
    for k in ("gaussian", "mog", "autoregressive", "cvae"):  # the likelihood heads (diffusion has none)
        b = r["heads"][k]["bc"]["return"]
        lines.append(
            target(b >= l2 - 0.15 * abs(e), f"{k} BC {b:.1f} no more than 15% of |expert| below L2's {l2:.1f}")
        )
    d = r["heads"]["diffusion"]["bc"]["return"]
    say(f"  (diffusion has no likelihood, so no BC target: its BC return is {d:.1f}; it needs DAgger's recoveries)")
    return lines


# ---- 5. memory ----


def memory(seed, quick, figure):
    return {
        "causal_confusion": confusion(seed, quick, figure),
        "non_markovian": non_markovian(seed, quick),
        "long": long_memory(seed, quick),
    }


def confusion(seed, quick, figure):
    """Causal confusion (de Haan, Jayaraman & Levine 2019): BC and DAgger on a road whose turn persists (kept
    with probability 0.775, so the turn stays the same 85% of the time while the reading is right 80% of the
    time), each without and with the brake light, the previous executed move (History(road, 1, action_dim=1)).
    One budget of 12,800 expert labels per method, 3 training seeds. Episodes start at a random offset, so the
    demonstrations hold recoveries: from the road alone both BCs compound and show nothing else.

    What it shows. With the brake light BC errs less on the expert's states (when the previous move and the
    reading disagree, the previous move is the better bet in the demonstrations), yet on its own roll-outs it
    repeats itself and never notices a turn change, so its cost nearly doubles. DAgger labels exactly those
    self-made states, so with the same observation it does not suffer."""
    T, rounds, n, road = 50, 4, 64, dict(eps=0.2, lanes=3, persist=0.775, start=3)
    train, seeds = im.TrainConfig(steps=400, lr=3e-3), range(seed, seed + (1 if quick else 3))
    cfg = im.DaggerConfig(rounds=rounds, horizon=T, train=im.TrainConfig(steps=200, lr=3e-3), val_seed=seed + 7)
    head, table = im.CategoricalHead(ROAD_MOVES), im.road_features(road["lanes"])
    brake_table = np.concatenate([np.repeat(table, 5, 0), np.tile(ROAD_MOVES, len(table))[:, None]], 1)  # (row, m)
    names = ["bc_plain", "bc_brake", "dagger_plain", "dagger_brake"]
    errors, costs, exact = ({k: [] for k in names} for _ in range(3))
    episodes = 1024 if quick else 4096
    for s in seeds:
        rng = np.random.default_rng(s)

        def env(num, brake, env_seed=s):
            road_env = im.Road(num, T, seed=env_seed, **road)
            return im.History(road_env, 1, action_dim=1) if brake else road_env

        demo_env = env(rounds * n, True)
        obs, labels = im.rollout(demo_env, None, T, rng, expert=demo_env.expert, beta=1.0, seed=s + 1).pairs()
        held_env = env(1024, True, s + 99)  # fresh expert episodes: the held-out error is on states never trained on
        held = im.rollout(held_env, None, T, rng, expert=held_env.expert, beta=1.0, seed=s + 99)
        for name in names:
            brake, view = name.endswith("brake"), (lambda o: o) if name.endswith("brake") else (lambda o: o[:, :-1])
            policy = im.Policy(head, obs.shape[1] - (not brake), np.random.default_rng(s))
            if name.startswith("bc"):
                im.bc(policy, view(obs), labels, rng, train)  # both BCs learn from the same demonstrations
            else:
                learner_env = env(n, brake, s + 2)
                policy = im.dagger(policy, learner_env, learner_env.expert, rng, cfg).best
            wrong = np.abs(
                policy.act(view(held.observations[:, :-1].reshape(-1, obs.shape[1]))) - held.labels.reshape(-1, 1)
            )
            errors[name].append((wrong > 0.5).reshape(len(held.mask), T).mean(1))  # every held-out episode runs T steps
            costs[name].append(road_cost(env(episodes, brake, s + 1000), policy.act, T, s + 1000))
            probs = im.road_move_probs(policy.act(brake_table if brake else table))
            exact[name].append(float(im.road_exact_cost(probs.reshape(-1, 5, 5) if brake else probs, T, **road)[-1]))
        say(f"  seed {s}: " + "  ".join(f"{k} {costs[k][-1].mean():.2f}" for k in names))
    rng, record = np.random.default_rng(seed), {}
    for k in names:
        err, cost = np.concatenate(errors[k]), np.concatenate(costs[k])  # pooled over seeds
        record[k] = {
            "heldout_error": float(err.mean()),
            "heldout_error_ci": im.bootstrap_ci(err, rng)[0].tolist(),
            "cost": float(cost.mean()),
            "cost_ci": im.bootstrap_ci(cost, rng)[0].tolist(),
            "cost_exact_per_seed": exact[k],
        }
    figure["confusion"] = record
    return record


def non_markovian(seed, quick):
    """The cued tree: the side to pass on is shown only on the first step. The same mixture head, with and
    without a history of the last 8 observations (mirrored demonstrations, as in section 2)."""
    rng, k, steps, record = np.random.default_rng(seed), 8, 250 if quick else 3000, {}
    for name, make in (
        ("memoryless", lambda n: im.Tree(n, cue=True)),
        ("history", lambda n: im.History(im.Tree(n, cue=True), k)),
    ):
        demo_env = make(256)
        obs, actions = im.rollout(demo_env, None, 40, rng, expert=demo_env.expert, beta=1.0, seed=seed).pairs()
        mirror = np.tile(np.float32([-1, 1, -1]), obs.shape[1] // 3)  # x -> -x and the cue -> -cue
        obs, actions = np.concatenate([obs, obs * mirror]), np.concatenate([actions, actions * mirror[:2]])
        policy = im.Policy(
            im.MixtureHead(2, 5), obs.shape[1], np.random.default_rng(seed), hidden=(256, 256), activation="tanh"
        )
        im.bc(policy, obs * 100, actions, rng, im.TrainConfig(steps=steps))
        traj = im.rollout(
            make(256 if quick else 1000), lambda o, p=policy: p.sample(o * 100, rng), 40, rng, seed=seed + 2
        )
        record[name] = {
            "success": float(traj.success.mean()),
            "success_ci": im.bootstrap_ci(traj.success, rng)[0].tolist(),
        }
        say(f"  {name:<11} success {record[name]['success']:.3f}")
    return record


def long_memory(seed, quick):
    """The cued tree behind a corridor of L steps: the side to pass on is shown on the first step only and the expert
    goes straight for L steps before it swerves. A History of the last k < L observations has lost the cue by then
    (a mixture head that picks a side: a coin flip); a GRU carries it (Recurrent, BC on whole episodes). Both learn
    from the same mirrored demonstrations, inputs x10, recorded with DART's noise: in noiseless ones x stays 0 along
    the corridor, and the recurrent learner then drifted off it unseen (|x| ~ 0.18 at the tree, 3 seeds in 4 failed).
    The recurrent policy uses the L2 head: given its memory the expert is unimodal. passed: reached the far side
    untouched, on either side (the history policy's control is sound: its misses are the coin flip)."""
    L, k, scale, noise = 20, 8, np.float32(10), 0.1
    T, steps, n_eval = 40 + L, (150, 120) if quick else (1600, 250), 256 if quick else 1000
    rng, mirror, record = np.random.default_rng(seed), np.float32([-1, 1, -1]), {"cue_steps": L}

    def env(n, history=False):
        tree = im.Tree(n, T, cue=True, corridor=L)
        return im.History(tree, k) if history else tree

    def evaluate(act, history=False):
        traj = im.rollout(env(n_eval, history), act, T, rng, seed=seed + 2)
        passed = traj.observations[np.arange(n_eval), traj.mask.sum(1), -2] >= im.Tree.goal_y  # y, last frame
        return {
            "success": float(traj.success.mean()),
            "success_ci": im.bootstrap_ci(traj.success, rng)[0].tolist(),
            "passed": float(passed.mean()),
        }

    start = time.perf_counter()
    demo_env = env(64, history=True)  # one set of demonstrations for both: the newest frame of each stack is o_t
    demos = im.rollout(demo_env, None, T, rng, expert=demo_env.expert, beta=1.0, seed=seed, noise=noise)
    obs, actions = demos.pairs()
    obs, actions = np.concatenate([obs, obs * np.tile(mirror, k)]), np.concatenate([actions, actions * mirror[:2]])
    history = im.Policy(im.MixtureHead(2, 5), 3 * k, np.random.default_rng(seed), hidden=(64, 64), activation="tanh")
    im.bc(history, obs * scale, actions, rng, im.TrainConfig(steps=steps[0], lr=1e-2, max_grad_norm=1.0))
    record["history"] = {"k": k, **evaluate(lambda o: history.sample(o * scale, rng), history=True)}
    history_seconds = time.perf_counter() - start

    start = time.perf_counter()
    episodes = demos.observations[:, :-1, -3:]  # (n, T, O)
    obs = np.concatenate([episodes, episodes * mirror]) * scale
    actions = np.concatenate([demos.labels, demos.labels * mirror[:2]])
    mask = np.concatenate([demos.mask, demos.mask])
    recurrent = im.Recurrent(im.L2Head(2), 3, np.random.default_rng(seed), hidden=(64, 64), activation="tanh")
    train = im.TrainConfig(steps=steps[1], batch_size=16, lr=1e-2, max_grad_norm=1.0)  # batch_size episodes
    im.bc(recurrent, obs, actions, rng, train, mask=mask)
    act = im.RecurrentActor(recurrent)

    def recurrent_act(o):
        return act(o * scale)

    recurrent_act.reset = act.reset  # rollout resets the actor's memory where episodes begin
    record["recurrent"] = evaluate(recurrent_act)
    record["seconds"] = {"history": history_seconds, "recurrent": time.perf_counter() - start}
    for name in ("history", "recurrent"):
        r = record[name]
        lo, hi = r["success_ci"]
        say(f"  {name:<10} success {r['success']:.3f} [{lo:.3f}, {hi:.3f}]  passed {r['passed']:.3f}")
    return record


def report_memory(r):
    c, m, long = r["causal_confusion"], r["non_markovian"], r["long"]
    say(f"\n  {'method':<13}{'held-out error':>15}{'95% CI':>17}{'cost J':>9}{'95% CI':>17}   exact J per seed")
    for k, v in c.items():
        (elo, ehi), (clo, chi) = v["heldout_error_ci"], v["cost_ci"]
        exact = ", ".join(f"{x:.2f}" for x in v["cost_exact_per_seed"])
        err, cost = (
            f"{v['heldout_error']:>15.3f}  [{elo:.3f}, {ehi:.3f}]",
            f"{v['cost']:>9.2f}  [{clo:5.2f}, {chi:5.2f}]",
        )
        say(f"  {k:<13}{err}{cost}   {exact}")
    say(f"\n  {'policy':<12}{'success':>8}{'95% CI':>17}   (the cued tree: pass on the side shown at the start)")
    for k, v in m.items():
        say(f"  {k:<12}{v['success']:>8.3f}  [{v['success_ci'][0]:.3f}, {v['success_ci'][1]:.3f}]")
    say(f"\n  a cue {long['cue_steps']} steps before the decision (a corridor before the cued tree):")
    for k in ("history", "recurrent"):
        v = long[k]
        say(
            f"  {k:<12}{v['success']:>8.3f}  [{v['success_ci'][0]:.3f}, {v['success_ci'][1]:.3f}]"
            f"  passed {v['passed']:.3f}"
        )
    ratio = c["dagger_brake"]["cost"] / c["dagger_plain"]["cost"]
    return [
        target(
            c["bc_brake"]["heldout_error_ci"][1] < c["bc_plain"]["heldout_error_ci"][0],
            f"brake light: BC's held-out error {c['bc_brake']['heldout_error']:.3f} < "
            f"{c['bc_plain']['heldout_error']:.3f} without it",
        ),
        target(
            c["bc_brake"]["cost_ci"][0] > c["bc_plain"]["cost_ci"][1],
            f"... yet its cost {c['bc_brake']['cost']:.2f} > {c['bc_plain']['cost']:.2f} (causal confusion)",
        ),
        target(
            c["dagger_brake"]["cost_ci"][1] < c["bc_brake"]["cost_ci"][0] and abs(ratio - 1) <= 0.1,
            f"DAgger with the brake light {c['dagger_brake']['cost']:.2f} < BC's, and {ratio:.2f}x DAgger "
            "without it (within 10%)",
        ),
        target(
            m["memoryless"]["success"] <= 0.6,
            f"memoryless BC on the cued tree {m['memoryless']['success']:.3f} <= 0.60",
        ),
        target(m["history"]["success"] >= 0.95, f"BC with history {m['history']['success']:.3f} >= 0.95"),
        target(
            long["history"]["success"] <= 0.6,
            f"a cue {long['cue_steps']} steps back: a history of {long['history']['k']} steps "
            f"{long['history']['success']:.3f} <= 0.60",
        ),
        target(long["recurrent"]["success"] >= 0.95, f"... a GRU's memory {long['recurrent']['success']:.3f} >= 0.95"),
    ]


# ---- 6. action chunks ----


TREE = dict(dt=0.025, grid=0.3, horizon=120)  # a quarter of the tree's usual step: about 80 an episode
CHUNK_K, MS = (
    16,
    (16, 8),
)  # chunk length; steps executed per prediction: whole chunks (the target), and Diffusion Policy's 8
ROAD_K, ROAD_M, ROAD_T = 8, [1, 2, 4, 8], 32


def switches(traj, grid, block=CHUNK_K):
    """Per episode, (reversals, undecided). reversals: sign changes of the sideways move summed over blocks of `block`
    steps from the episode's start (a whole chunk each, when chunks are executed whole), over the blocks that begin in
    the centre cell below the tree. undecided: the episode still sees itself in the centre cell next to the tree
    (y within half a cell of the tree's cell), where the demonstrations have already left it."""
    n, T = traj.mask.shape
    T -= T % block
    move = np.where(traj.mask, np.clip(traj.actions[:, :, 0], -1, 1), 0)[:, :T].reshape(n, -1, block).sum(2)
    start = traj.observations[:, :T:block]  # (n, T / block, 2): what each block begins by seeing
    live = traj.mask[:, :T:block] & (start[:, :, 0] == 0) & (start[:, :, 1] < 0) & (np.abs(move) > 1e-3)
    reversals = np.array([np.count_nonzero(np.diff(np.sign(m[keep]))) for m, keep in zip(move, live)], np.float64)
    seen = traj.observations[:, :-1]
    near = traj.mask & (seen[..., 0] == 0) & (seen[..., 1] >= -im.Tree.radius - grid / 2) & (seen[..., 1] < 0)
    return reversals, near.any(1)


def tree_head(name, targets):
    """bench.py multimodal's mixture and diffusion heads over (k A,) targets, smaller: head, hidden widths, steps."""
    D = targets.shape[1]
    if name == "mog":
        return im.MixtureHead(D, 5, means=principal_spread(targets, 5)), (64, 64), 1000
    # bench.py's fork-tuned schedule (shift 8, noisy actions x10) fits 2-D actions; on 32-D chunks it trains to a
    # loss twice as high (measured on the fine-sensed tree), so both take the plain schedule here
    return im.DiffusionHead(-np.ones(D), np.ones(D), sample_steps=10), (128, 128), 3000


def tree_chunks(seed, quick):
    """Per head: one policy trained on single actions, sampled at every step; one trained on chunks of K, run with
    receding horizons m in MS (m = K: whole chunks, open loop). Common random numbers: the same starts and sides."""
    rng, H = np.random.default_rng(seed), TREE["horizon"]
    demo_env = im.Tree(256, H, dt=TREE["dt"], grid=TREE["grid"])
    demos = im.rollout(demo_env, None, H, rng, expert=demo_env.expert, beta=1.0, seed=seed)
    evaluation, scale, out = im.Tree(128 if quick else 256, H, dt=TREE["dt"], grid=TREE["grid"]), 1 / TREE["grid"], {}
    for name in ("mog", "diffusion"):
        out[name] = {}
        for k, ms in ((1, (1,)), (CHUNK_K, MS)):
            cpu = time.process_time()
            obs, targets = demos.chunks(k)  # k = 1: the usual pairs
            mirror = np.float32([-1, 1])  # x -> -x, as in bench.py's multimodal: both sides exactly equally
            obs, targets = np.concatenate([obs, obs * mirror]), np.concatenate([targets, targets * np.tile(mirror, k)])
            head, hidden, steps = tree_head(name, targets)
            policy = im.Policy(head, 2, np.random.default_rng(seed), hidden=hidden, activation="tanh")
            im.bc(
                policy,
                obs * np.float32(scale),
                targets,
                rng,
                im.TrainConfig(steps=steps // 4 if quick else steps, lr=2e-3),
            )
            train_cpu = time.process_time() - cpu
            for m in ms:
                cpu = time.process_time()
                act = im.ChunkedActor(lambda o, p=policy: p.sample(o * np.float32(scale), rng), k, m)  # k = 1: per step
                traj = im.rollout(evaluation, act, H, rng, seed=seed + 2)
                reversals, undecided = switches(traj, TREE["grid"])
                kind = "per_step" if k == 1 else "chunked" if m == CHUNK_K else f"m{m}"  # chunked: whole
                out[name][kind] = {
                    "success": float(traj.success.mean()),
                    "success_ci": im.bootstrap_ci(traj.success, rng)[0].tolist(),
                    "switches": float(reversals.mean()),  # reversals of the sideways move, per episode
                    "undecided": float(undecided.mean()),
                    "k": k,
                    "m": m,
                    "train_cpu": train_cpu,
                    "eval_cpu": time.process_time() - cpu,
                }
                say(
                    f"  tree {name:<9} {kind:<8} success {traj.success.mean():.3f}  reversals {reversals.mean():.2f}"
                    f"  undecided at the tree {undecided.mean():.3f}"
                )
    return out


def road_chunks(seed, quick):
    """Chunks of the road's moves by the autoregressive head (5 bins of width 1 per step: a categorical over -2..2
    for each of k steps, chosen in order), trained by bc on expert chunks from starts anywhere across the road (so
    that the policy knows how to get back), then run from the centre with m = 1, 2, 4, 8."""
    rng, T, cpu = np.random.default_rng(seed), ROAD_T, time.process_time()
    demo_env = im.Road(16384 // T, T, seed=seed, start=ROAD["lanes"], **ROAD)  # starts off the road: recoveries
    obs, targets = im.rollout(demo_env, None, T, rng, expert=demo_env.expert, beta=1.0, seed=seed).chunks(ROAD_K)
    head = im.AutoregressiveHead(np.full(ROAD_K, -2.5), np.full(ROAD_K, 2.5), bins=5)
    policy = im.Policy(head, demo_env.obs_dim, np.random.default_rng(seed))
    im.bc(policy, obs, targets, rng, im.TrainConfig(steps=100 if quick else 300, lr=3e-3))
    evaluation, cost, ci = im.Road(1024 if quick else 2048, T, **ROAD), [], []
    for m in ROAD_M:
        c = road_cost(evaluation, im.ChunkedActor(policy.act, ROAD_K, m), T, seed + 1000)
        cost.append(float(c.mean()))
        ci.append(im.bootstrap_ci(c, rng)[0].tolist())
    say("  road " + "  ".join(f"m = {m}: {c:.3f}" for m, c in zip(ROAD_M, cost)))
    return {"T": T, "k": ROAD_K, "m": ROAD_M, "cost": cost, "cost_ci": ci, "cpu": time.process_time() - cpu}


CONTROL_K, CONTROL_M = 4, 0.01  # chunk length; ACT's m (w_i = exp(-m i), i = 0 the oldest: 0.01 is nearly uniform)


def chunk_heads(k):
    """bench.py control's heads over (k A,) targets: head, hidden widths, gradient steps, step size. The mixture has
    3 components, not control's 5: with 5, DAgger's chunk policy missed the target on 2 of 4 seeds, with 3 on none."""
    return {
        "l2": (im.L2Head(k), (64, 64), 1500, 3e-3),
        "mog": (im.MixtureHead(k, 3, log_std_min=-2.0, shared_std=True), (64, 64), 1500, 3e-3),
    }


def chunks_control(seed, quick):
    """Per head: a policy over chunks of CONTROL_K torques, run by temporal ensembling (a chunk predicted every step,
    the executed torque the average of the CONTROL_K chunks that cover it) with its deterministic action (policy.act),
    from the EPISODES common random starts of section 9. Trained two ways on LABELS expert labels each:
      bc      chunks of LABELS / 200 expert demonstrations
      dagger  ROUNDS rounds of LABELS / (200 ROUNDS) episodes, the first the expert's, the rest driven by the
              ensembled chunk policy; a chunk target there is the expert's labels at the next CONTROL_K states the
              learner visited (Trajectories.chunks), retrained warm-started on the aggregate for half the steps
    Contrast: the same policies run open loop, whole chunks at a time (receding horizon, m = k)."""
    rng, k, m = np.random.default_rng(seed), CONTROL_K, CONTROL_M
    evaluation = Scaled(32 if quick else EPISODES, seed=seed + 1)

    def evaluate(act):
        returns = -im.rollout(evaluation, act, 200, rng, seed=seed + 2).total_cost  # the same starts every time
        ci, _ = im.bootstrap_ci(returns, rng)
        return {"return": float(returns.mean()), "return_ci": [float(c) for c in ci]}

    def run(policy):  # ensembled (the target), and whole chunks open loop (the contrast)
        ensemble = evaluate(im.ChunkedActor(policy.act, k, m, mode="ensemble"))
        return ensemble | {"receding": evaluate(im.ChunkedActor(policy.act, k, k))}

    demo_env = Scaled(LABELS // 200, seed=seed)
    demos = im.rollout(demo_env, None, 200, rng, expert=demo_env.expert, beta=1.0, seed=seed + 3)
    record = {
        "expert": evaluate(lambda obs: evaluation.expert()),
        "k": k,
        "m": m,
        "labels": LABELS,
        "episodes": evaluation.num_envs,
    }
    for name, (head, hidden, steps, lr) in chunk_heads(k).items():
        steps, cpu = steps // 8 if quick else steps, time.process_time()
        policy = im.Policy(head, 3, np.random.default_rng(seed), hidden=hidden)
        im.bc(policy, *demos.chunks(k), rng, im.TrainConfig(steps=steps, lr=lr))
        bc = run(policy)
        policy = im.Policy(head, 3, np.random.default_rng(seed), hidden=hidden)
        env, data = Scaled(LABELS // (200 * ROUNDS), seed=seed + 4), []
        for i in range(ROUNDS):
            learner = None if i == 0 else im.ChunkedActor(policy.act, k, m, mode="ensemble")  # DAgger: who acts
            traj = im.rollout(
                env, learner, 200, rng, expert=env.expert, beta=1.0 if i == 0 else 0.0, seed=seed + 10 + i
            )
            data.append(traj.chunks(k))  # the expert labels every state visited, whoever acted
            obs, targets = (np.concatenate(part) for part in zip(*data))  # aggregate
            im.bc(policy, obs, targets, rng, im.TrainConfig(steps=steps if i == 0 else steps // 2, lr=lr))
        record[name] = run(policy) | {"data": "dagger", "bc": bc, "cpu": time.process_time() - cpu}
        say(
            f"  pendulum {name:<4} k = {k}, ensembled: BC {bc['return']:7.1f}  DAgger {record[name]['return']:7.1f}"
            f"  (expert {record['expert']['return']:.1f}), {record[name]['cpu']:.1f} s CPU"
        )
    return record


def report_chunks_control(r):
    e, k, m = r["expert"]["return"], r["k"], r["m"]
    say(
        f"  pendulum, chunks of k = {k}, ensembled with m = {m:g}: return [95% CI] on {r['episodes']} common starts, "
        f"{r['labels']} labels each; expert {e:.1f} "
        f"[{r['expert']['return_ci'][0]:.1f}, {r['expert']['return_ci'][1]:.1f}]"
    )
    say(f"    {'head':<6}{'data':<8}{'ensembled':>24}{'whole chunks (m = k)':>26}")
    lines = []
    for name, h in r.items():
        if not isinstance(h, dict) or "data" not in h:
            continue
        for data, x in (("bc", h["bc"]), ("dagger", h)):
            say(
                f"    {name:<6}{data:<8}{x['return']:>9.1f} [{x['return_ci'][0]:.0f}, {x['return_ci'][1]:.0f}]"
                f"{x['receding']['return']:>11.1f} [{x['receding']['return_ci'][0]:.0f}, "
                f"{x['receding']['return_ci'][1]:.0f}]" + (f"   {h['cpu']:.1f} s CPU" if data == "dagger" else "")
            )
        lines.append(
            target(
                h["return"] >= e - 0.15 * abs(e),
                f"chunks: pendulum {name} (DAgger data) ensembled chunks of {k} return {h['return']:.1f} within 15% "
                f"of the expert's {e:.1f}",
            )
        )
    return lines


def chunks(seed, quick, figure):
    """Where chunks should help: on the tree seen through a coarse sensor (positions rounded to cells of 0.3, steps of
    0.025), a small sideways step does not change what the learner sees. In the centre cell the demonstrations part left
    and right; a head sampled afresh at every step picks a side anew each step and random-walks inside the cell (a cell
    edge 0.15 away, at sideways speeds about 0.5, takes about (0.15 / 0.025 / 0.5)^2 = 144 steps to reach by chance,
    while the tree is about 30 away), so it comes to the tree still in the middle, where no demonstration ever was. A
    chunk of k = 16 steps in one direction (16 x 0.025 x 0.5 = 0.2) leaves the cell, and the next observation shows the
    side taken. Where chunks hurt: on the road a new reading of the turn arrives at every step, and an open-loop chunk
    cannot react to it, so the cost grows with the steps executed per prediction, m."""
    start, cpu = time.perf_counter(), time.process_time()
    record = {
        "task": f"tree, dt {TREE['dt']}, grid {TREE['grid']}, horizon {TREE['horizon']}, k {CHUNK_K}",
        "k": CHUNK_K,
    }
    record["heads"] = tree_chunks(seed, quick)
    record["road"] = road_chunks(seed, quick)
    record["control"] = chunks_control(seed, quick)
    record["seconds"], record["cpu"] = time.perf_counter() - start, time.process_time() - cpu
    return record


def report_chunks(r):
    kinds = ["per_step"] + ["chunked" if m == CHUNK_K else f"m{m}" for m in MS]
    say(f"\n  {r['task']}: success [95% CI], reversals per episode, share undecided at the tree")
    say(f"  {'head':<11}" + "".join(f"{k:>36}" for k in kinds))
    lines = []
    for name, h in r["heads"].items():
        chunked, per_step = h["chunked"], h["per_step"]
        row = "".join(
            f"{h[k]['success']:>8.3f} [{h[k]['success_ci'][0]:.3f}, {h[k]['success_ci'][1]:.3f}]"
            f"{h[k]['switches']:>7.2f}{h[k]['undecided']:>7.3f}"
            for k in kinds
        )
        cpu = sum(h[k]["eval_cpu"] for k in kinds) + per_step["train_cpu"] + h["chunked"]["train_cpu"]
        say(f"  {name:<11}{row}   {cpu:.1f} s CPU")
        gain = chunked["success"] - per_step["success"]
        lines.append(
            target(gain >= 0.2, f"chunks: {name} whole chunks' success - per-step success {gain:+.3f} >= 0.20")
        )
        lines.append(
            target(
                chunked["undecided"] < per_step["undecided"],
                f"chunks: {name} undecided at the tree, chunked {chunked['undecided']:.3f} < per step "
                f"{per_step['undecided']:.3f}",
            )
        )
    road = r["road"]
    say(f"  road, T = {road['T']}, k = {road['k']}: cost per episode against m (receding), {road['cpu']:.1f} s CPU")
    for m, c, ci in zip(road["m"], road["cost"], road["cost_ci"]):
        say(f"    m = {m}: {c:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]")
    rising = all(a[1] < b[0] for a, b in zip(road["cost_ci"][:-1], road["cost_ci"][1:]))
    lines.append(
        target(rising, "chunks: road cost rises with m, each interval above the last (open loop cannot react)")
    )
    lines += report_chunks_control(r["control"])
    return lines


# ---- 7. hindsight relabeling ----


def hindsight(seed, quick, figure):
    """Goal-conditioned BC on relabeled play against BC without goals and BC on demos to one fixed goal.
    Relabeled with future states, the expert's wandering play teaches reaching goals it never aimed at, from
    the central square where play started and from anywhere in the arena; the final state alone is weaker."""
    rng = np.random.default_rng(seed)
    wander = im.Goals(2560, horizon=20, play=True, start=0.5)  # play starts in the central square
    play = im.rollout(wander, None, 20, rng, expert=wander.expert, beta=1.0, seed=seed)
    one_goal = np.tile(np.float32([[0.5, 0.5]]), (2560, 1))
    fixed = im.Goals(2560, horizon=20, start=0.5)
    demos = im.rollout(fixed, None, 20, rng, expert=fixed.expert, beta=1.0, seed=seed, options={"goals": one_goal})
    train = im.TrainConfig(steps=800 if quick else 3000)
    goals = np.random.default_rng(seed + 1).uniform(-1, 1, (1000, 2)).astype(np.float32)  # held-out goals
    record = {}
    for name in ("gcbc_future", "gcbc_final", "bc_no_goal", "bc_one_goal"):
        policy = im.Policy(
            im.L2Head(2), 2 if name == "bc_no_goal" else 4, np.random.default_rng(seed), hidden=(128, 128)
        )
        if name.startswith("gcbc"):
            im.hindsight_bc(policy, play, rng, train, strategy=name[5:])
        elif name == "bc_no_goal":
            im.bc(policy, *play.pairs(), rng, train)
        else:
            obs, act = demos.pairs()
            im.bc(policy, np.concatenate([obs, np.tile(one_goal[:1], (len(obs), 1))], 1), act, rng, train)

        def act(obs, policy=policy, name=name):
            return policy.act(obs if name == "bc_no_goal" else np.concatenate([obs, goals], 1))

        record[name] = {
            key: float(
                im.rollout(
                    im.Goals(1000, 30, start=s), act, 30, rng, seed=seed + 5, options={"goals": goals}
                ).success.mean()
            )
            for key, s in (("success", 0.5), ("perturbed_success", 1.0))  # perturbed: starts anywhere in the arena
        }
        say(f"  {name:<12} success {record[name]['success']:.3f}")
    return record


def report_hindsight(r):
    say(f"\n  {'policy':<13}{'held-out goals':>15}{'perturbed starts':>18}")
    for k, m in r.items():
        say(f"  {k:<13}{m['success']:>15.3f}{m['perturbed_success']:>18.3f}")
    f, b = r["gcbc_future"]["success"], r["bc_no_goal"]["success"]
    return [
        target(f >= 0.9, f"future relabeling {f:.3f} >= 0.90 on held-out goals"),
        target(f - b >= 0.3, f"future relabeling {f - b:+.3f} above BC without goals (>= +0.30)"),
    ]


# ---- 8. without the expert's actions ----


def without_actions(seed, quick, figure):
    return {"observation": observation(seed, quick), "one_shot": one_shot(seed, quick)}


def observation(seed, quick):
    """BCO against BC with the true actions on the same 16 state-only demonstrations of the goal task, over 3
    training seeds (2 quick), with the same initial weights: the labels and the minibatch draws differ. The
    learner explores one uniform random step from each of 2560 starts away from the walls, where every
    transition is invertible; its inverse model sees positions only (the dynamics do not depend on the goal).
    At the walls pushing and standing still look the same, and the inferred labels go wrong there."""
    T, record = 30, {"bco": [], "bc_actions": []}
    cfg = im.BCOConfig(inverse=im.TrainConfig(steps=400 if quick else 2000, lr=1e-2))
    cfg = replace(cfg, train=im.TrainConfig(steps=200 if quick else 1000, lr=3e-3))
    goals = np.random.default_rng(seed + 1).uniform(-1, 1, (500 if quick else 1000, 2)).astype(np.float32)
    evaluation = im.Goals(len(goals), T, observe_goal=True)
    for s in range(seed, seed + (2 if quick else 3)):
        rng = np.random.default_rng(s)
        demo_env, explore_env = (
            im.Goals(16, T, observe_goal=True, seed=s),
            im.Goals(1280 if quick else 2560, 1, start=0.9, observe_goal=True),
        )
        demos = im.rollout(demo_env, None, T, rng, expert=demo_env.expert, beta=1.0, seed=s)
        for name in record:
            policy = im.Policy(im.L2Head(2), 4, np.random.default_rng(s))
            if name == "bco":
                inverse = im.Policy(im.L2Head(2), 4, np.random.default_rng(s + 1))

                def explore(obs, rng=rng):  # BCO: uniform random actions
                    return rng.uniform(-1, 1, (len(obs), 2)).astype(np.float32)

                steps = im.bco(
                    policy,
                    inverse,
                    explore_env,
                    demos.states_only(),
                    explore,
                    np.random.default_rng(s + 2),
                    cfg,
                    state=slice(0, 2),
                )
            else:
                im.bc(policy, *demos.pairs(), np.random.default_rng(s + 2), cfg.train)
            record[name].append(
                im.rollout(evaluation, policy.act, T, rng, seed=s + 3, options={"goals": goals}).success
            )
    out, rng = {}, np.random.default_rng(seed)
    for name, success in record.items():
        pooled = np.concatenate(success)
        out[name] = {
            "success": float(pooled.mean()),
            "success_ci": im.bootstrap_ci(pooled, rng)[0].tolist(),
            "per_seed": [float(x.mean()) for x in success],
        }
    out["bco"]["exploration_steps"] = steps
    say("  " + "  ".join(f"{k} {v['success']:.3f}" for k, v in out.items()))
    return out


def one_shot(seed, quick):
    """One-shot imitation over 64 tasks of the goal world (a task is a goal no observation names), 4
    demonstrations each; tested on unseen goals, one demonstration each from one start, the policy from
    another. Bounds: BC without the task, and goal-conditioned BC told the true goal, on the same demos.
    The encoder reads phi(s_t, t / T) mean-pooled over the demonstration; the gradient runs from the policy's
    loss through z and the pooling into it. The time stamp matters: an order-blind mean of phi(s_t) sees a
    bag of states and finds the goal only because demonstrations linger there."""
    rng, T, tasks, per, E = np.random.default_rng(seed), 30, 64, 4, 16
    cfg = im.OneShotConfig(horizon=T, train=im.TrainConfig(steps=600 if quick else 1500, lr=3e-3))
    goals = np.repeat(rng.uniform(-1, 1, (tasks, 2)).astype(np.float32), per, 0)
    env = im.Goals(tasks * per, T, seed=seed)
    demos = im.rollout(env, None, T, rng, expert=env.expert, beta=1.0, seed=seed, options={"goals": goals})
    test = np.random.default_rng(seed + 1).uniform(-1, 1, (500 if quick else 1000, 2)).astype(np.float32)
    shown_env, test_env = im.Goals(len(test), T), im.Goals(len(test), T)
    shown = im.rollout(
        shown_env, None, T, rng, expert=shown_env.expert, beta=1.0, seed=seed + 2, options={"goals": test}
    )
    actors, (obs, actions) = {}, demos.pairs()
    for name, time_stamp in (("one_shot", True), ("one_shot_order_blind", False)):
        encoder = im.MLP((2 + time_stamp, 64, 64, E))
        policy = im.Policy(im.L2Head(2), 2 + E, np.random.default_rng(seed))
        c = replace(cfg, time_stamp=time_stamp)
        actors[name] = im.one_shot_actor(policy, encoder, im.one_shot(policy, encoder, demos, per, rng, c), shown, c)
    for name in ("no_task", "true_goal"):
        policy = im.Policy(im.L2Head(2), 2 if name == "no_task" else 4, np.random.default_rng(seed))
        told = obs if name == "no_task" else np.concatenate([obs, np.repeat(goals, T, 0)[demos.mask.ravel()]], 1)
        im.bc(policy, told, actions, rng, im.TrainConfig(steps=300 if quick else 1000))
        actors[name] = policy.act if name == "no_task" else (lambda o, p=policy: p.act(np.concatenate([o, test], 1)))
    out = {}
    for name, act in actors.items():
        success = im.rollout(test_env, act, T, rng, seed=seed + 3, options={"goals": test}).success
        out[name] = {"success": float(success.mean()), "success_ci": im.bootstrap_ci(success, rng)[0].tolist()}
    say("  " + "  ".join(f"{k} {v['success']:.3f}" for k, v in out.items()))
    return out


def report_without_actions(r):
    o, s = r["observation"], r["one_shot"]
    say(f"\n  {'policy':<22}{'success':>8}{'95% CI':>17}   (goal task, unseen goals)")
    for k, v in (("bc_actions", o["bc_actions"]), ("bco", o["bco"]), *s.items()):
        say(f"  {k:<22}{v['success']:>8.3f}  [{v['success_ci'][0]:.3f}, {v['success_ci'][1]:.3f}]")
    per_seed = {k: ", ".join(f"{x:.3f}" for x in o[k]["per_seed"]) for k in ("bco", "bc_actions")}
    say(
        f"  BCO explored {o['bco']['exploration_steps']} steps per seed; "
        f"per seed: BCO {per_seed['bco']}, BC {per_seed['bc_actions']}"
    )
    gap = o["bco"]["success"] - o["bc_actions"]["success"]
    return [
        target(
            abs(gap) <= 0.05, f"BCO {o['bco']['success']:.3f} within 5 points of BC with the true actions ({gap:+.3f})"
        ),
        target(s["one_shot"]["success"] >= 0.8, f"one-shot {s['one_shot']['success']:.3f} >= 0.80 on unseen tasks"),
        target(
            s["one_shot"]["success"] - s["no_task"]["success"] >= 0.5,
            f"one-shot {s['one_shot']['success'] - s['no_task']['success']:+.3f} above BC without the task (>= +0.50)",
        ),
    ]


# ---- 9. third-person imitation ----


TCN_E, TCN_T, PLAY_T, TCN_K = 16, 30, 20, 8  # embedding width, demonstration horizon, play episode length, neighbours


def alignment(first, first_params, third, third_params, observations, frames):
    """Share of third-person frames whose nearest first-person embedding, among the same episode's first-person
    observations, lies within one step of the frame's own moment. observations (n, T+1, O), frames (n, T+1, P)."""
    hits = []
    for obs, video in zip(observations, frames):
        z1, z3 = im.embed(first, first_params, obs), im.embed(third, third_params, video)  # (T+1, E) each
        hits.append(np.abs(im.nearest(z3, z1)[:, 0] - np.arange(len(obs))) <= 1)
    return float(np.mean(hits))


def third_person(seed, quick, figure):
    """One video of the expert reaching an unseen goal, filmed by a camera the learner does not look through:
    translate its last frame into the learner's own view through the TCN embedding (nearest first-person play
    observation), and hand that goal to a goal-conditioned policy trained by hindsight relabeling on the same
    play. Baselines on the same goals: untrained encoders (no cross-view pairing), and the demonstration given
    in the learner's own view (its last observation is the goal: the ceiling)."""
    rng, camera = np.random.default_rng(seed), im.Camera()
    wander = im.Goals(1024 if quick else 2560, PLAY_T, play=True, start=1.0)  # the learner's play, both views
    play = im.rollout(wander, None, PLAY_T, rng, expert=wander.expert, beta=1.0, seed=seed)
    frames = camera.film(play.observations)  # (n, T+1, S S): time-synchronised with play.observations
    first, third = im.MLP((2, 64, 64, TCN_E)), im.MLP((camera.size**2, 64, 64, TCN_E))
    cfg = im.TCNConfig(train=im.TrainConfig(steps=800 if quick else 2000))
    trained = im.tcn(first, third, play.observations, frames, play.mask, rng, cfg)
    untrained = first.init(np.random.default_rng(seed + 9)), third.init(np.random.default_rng(seed + 10))
    policy = im.Policy(im.L2Head(2), 4, np.random.default_rng(seed))  # goal-conditioned: [position, goal]
    im.hindsight_bc(policy, play, rng, im.TrainConfig(steps=600 if quick else 1500))

    goals = np.random.default_rng(seed + 1).uniform(-1, 1, (128 if quick else 500, 2)).astype(np.float32)  # unseen
    shown = im.Goals(len(goals), TCN_T)  # one demonstration per goal, from its own start
    demo = im.rollout(shown, None, TCN_T, rng, expert=shown.expert, beta=1.0, seed=seed + 2, options={"goals": goals})
    video = camera.film(demo.observations[:, -1])  # (G, S S): where each video ends
    figure["frame"] = video[0].reshape(camera.size, camera.size)
    candidates = play.observations[:512].reshape(-1, 2)  # (M, 2): first-person observations from play
    fresh = im.Goals(64, PLAY_T, play=True, start=1.0)  # held-out play, for the alignment
    held_out = im.rollout(fresh, None, PLAY_T, rng, expert=fresh.expert, beta=1.0, seed=seed + 4).observations
    held_out = held_out, camera.film(held_out)
    out = {}
    for name, params in (("tcn", trained), ("unaligned", untrained), ("first_person", None)):
        if params is None:  # the ceiling: the demonstration in the learner's own view ends at the goal
            goal = demo.observations[:, -1]
        else:  # third person: translated through the embedding
            goal = im.video_goal(first, params[0], third, params[1], video, candidates, TCN_K)

        def act(o, g=goal):
            return policy.act(np.concatenate([o, g], 1))

        success = im.rollout(
            im.Goals(len(goals), TCN_T), act, TCN_T, rng, seed=seed + 3, options={"goals": goals}
        ).success
        out[name] = {"success": float(success.mean()), "success_ci": im.bootstrap_ci(success, rng)[0].tolist()}
        if params is not None:
            out[name]["goal_error"] = float(np.linalg.norm(goal - demo.observations[:, -1], axis=1).mean())
            out[name]["alignment"] = alignment(first, params[0], third, params[1], *held_out)
    out["alignment"] = out["tcn"].pop("alignment")
    say("  " + "  ".join(f"{k} {v['success']:.3f}" for k, v in out.items() if isinstance(v, dict)))
    return out


def report_third_person(r):
    say(f"\n  {'goal from':<14}{'success':>8}{'95% CI':>17}{'goal error':>12}   (unseen goals, one video each)")
    for k in ("tcn", "unaligned", "first_person"):
        v = r[k]
        err = f"{v['goal_error']:>12.3f}" if "goal_error" in v else f"{'':>12}"
        say(f"  {k:<14}{v['success']:>8.3f}  [{v['success_ci'][0]:.3f}, {v['success_ci'][1]:.3f}]{err}")
    say(f"  alignment {r['alignment']:.3f} (untrained encoders {r['unaligned']['alignment']:.3f})")
    t, u, a = r["tcn"]["success"], r["unaligned"]["success"], r["alignment"]
    return [
        target(t >= 0.8, f"third-person imitation through TCN {t:.3f} >= 0.80 on unseen goals"),
        target(u <= 0.3, f"the same pipeline without cross-view pairing {u:.3f} <= 0.30"),
        target(a >= 0.8, f"alignment {a:.3f} >= 0.80: a frame's nearest first-person moment within one step"),
    ]


# ---- 10. imitation and RL ----


def rl(seed, quick, figure):
    return {"rl": beyond(seed, quick), "gail": adversarial(seed, quick)}


def beyond(seed, quick):
    """A deliberately slow expert (speed 0.5 of the 1 the arena allows) on the goal task with the task's own
    cost, 1 per step away from the goal: the reward can tell a faster policy. BC matches the expert; PPO
    fine-tuning from BC beats it; PPO from scratch, on the same env steps, does not; and the shaped reward
    r + lambda log pi_BC(a | s) trades the two off. The Gaussian head's sigma lies in [0.1, 1] (BC drives it
    to 0.1, which leaves PPO room to explore). pi_BC's log-density falls by about 100 u^2 for a diagonal
    speed-up u, against 1 per step of task cost, so the best speed solves 100 lambda (u^2 + u) = 1: 0.59 at
    lambda 0.1, 0.51 at lambda 1 (the expert's 0.5)."""
    rng, T = np.random.default_rng(seed), 30
    cfg = im.PPOConfig(iterations=12 if quick else 40, horizon=T, lr=3e-4)
    task = dict(observe_goal=True, cost="task", speed=0.5)
    demo_env, probe_env, env = (
        im.Goals(256, T, **task),
        im.Goals(256, T, **task),
        im.Goals(128 if quick else 256, T, **task),
    )
    evaluation = im.Goals(500 if quick else 1000, T, **task)
    demos = im.rollout(demo_env, None, T, rng, expert=demo_env.expert, beta=1.0, seed=seed)
    probe, label = im.rollout(probe_env, None, T, rng, expert=probe_env.expert, beta=1.0, seed=seed + 1).pairs()
    probe = probe[np.linalg.norm(label, axis=1) > 0.1]  # held-out expert states still on their way

    def returns(act):
        R = -im.rollout(evaluation, act, T, rng, seed=seed + 2).total_cost  # common random numbers
        return {"return": float(R.mean()), "return_ci": im.bootstrap_ci(R, rng)[0].tolist()}

    def head():  # sigma in [0.1, 1]: BC drives it to 0.1, the task's tolerance, which leaves PPO room to explore
        return im.GaussianHead(2, log_std_min=math.log(0.1), log_std_max=0.0)

    pi_bc = im.Policy(head(), 4, np.random.default_rng(seed))
    im.bc(pi_bc, *demos.pairs(), rng, im.TrainConfig(steps=500 if quick else 1000, lr=3e-3))
    record, a_bc = {"expert": returns(evaluation.expert), "bc": returns(pi_bc.act)}, pi_bc.act(probe)

    def agreement(policy):  # the share of probe states where the policy acts within 0.1 of pi_BC
        return {"agreement": float(np.mean(np.linalg.norm(policy.act(probe) - a_bc, axis=1) <= 0.1))}

    shaped = [("finetune_shaped", lam) for lam in (0.1, 1.0)]
    for name, lam in [("finetune", None), ("scratch", None), *shaped]:
        policy = im.Policy(head(), 4, np.random.default_rng(seed + 1)) if name == "scratch" else pi_bc.copy()
        reward = None if lam is None else im.shaped_reward(pi_bc, lam)
        log = im.ppo(policy, env, rng, cfg, reward=reward, evaluate=None if name == "scratch" else agreement)
        row = returns(policy.act) | {"env_steps": log[-1]["env_steps"]}
        if name != "scratch":
            row["agreement"] = [1.0] + [entry["agreement"] for entry in log]  # before and after each update
        if lam is None:
            record[name] = row
        else:
            record.setdefault(name, []).append(row | {"lambda": lam})
        say(f"  {name:<16}{'' if lam is None else f' lambda {lam}':<12} return {row['return']:7.2f}")
    return record


def adversarial(seed, quick):
    """GAIL on the road (reading noise 0.02, T = 50) from ONE demonstration, which never leaves the road.
    Success: a total cost (disagreement with the expert) of at most 4. Then the learned reward alone trains
    a fresh policy, with no demonstrations. GAIL's entropy term matters: without it the learner is more
    deterministic than the demonstrator, the discriminator rates the demonstrator's rare misreadings above
    its common moves, and a fresh policy on that reward seeks them out."""
    rng, T, threshold = np.random.default_rng(seed), 50, 4
    road = dict(eps=0.02, lanes=3)
    cfg = im.PPOConfig(iterations=10 if quick else 20, horizon=T, lr=3e-3, entropy=0.2)
    demo_env, env = im.Road(1, T, seed=seed, **road), im.Road(64 if quick else 128, T, seed=seed, **road)
    evaluation = im.Road(1000 if quick else 4000, T, seed=seed, **road)
    demos = im.rollout(demo_env, None, T, rng, expert=demo_env.expert, beta=1.0, seed=seed)

    def success(act):
        return float(np.mean(road_cost(evaluation, act, T, seed + 2) <= threshold))

    def policy(k):
        return im.Policy(im.CategoricalHead(ROAD_MOVES), env.obs_dim, np.random.default_rng(seed + k))

    expert = im.rollout(evaluation, None, T, rng, expert=evaluation.expert, beta=1.0, seed=seed + 2)
    record = {"demos": int(demos.mask.sum()), "expert": {"success": float(np.mean(expert.total_cost <= threshold))}}
    pi_bc, learner, fresh = policy(0), policy(1), policy(2)
    im.bc(pi_bc, *demos.pairs(), rng, im.TrainConfig(steps=300, lr=3e-3))
    record["bc"] = {"success": success(pi_bc.act), "env_steps": 0}
    initial = learner.copy()
    D, log = im.gail(learner, env, *demos.pairs(), rng, cfg)
    record["gail"] = {"success": success(learner.act), "env_steps": log[-1]["env_steps"]}

    def learned_reward(traj):
        return im.gail_reward(D, traj.observations[:, :-1], traj.actions)  # frozen: IRL's output

    log = im.ppo(fresh, env, rng, cfg, reward=learned_reward)  # no demonstrations
    record["irl_fresh"] = {"success": success(fresh.act), "env_steps": log[-1]["env_steps"]}
    trajs = expert, im.rollout(evaluation, lambda o: initial.sample(o, rng), T, rng, seed=seed + 3)
    learned = [(learned_reward(t) * t.mask).sum(1) for t in trajs]
    record["learned_return"] = {"expert": float(learned[0].mean()), "initial_learner": float(learned[1].mean())}
    record["ranking"] = float(np.mean(learned[0][:, None] > learned[1][None, :]))  # P(expert's > the learner's)
    say("  " + "  ".join(f"{k} {record[k]['success']:.3f}" for k in ("bc", "gail", "irl_fresh")))
    return record


def report_rl(r):
    b, g = r["rl"], r["gail"]
    rows = [("expert", b["expert"]), ("bc", b["bc"]), ("finetune", b["finetune"]), ("scratch", b["scratch"])]
    rows += [(f"shaped, lambda {x['lambda']}", x) for x in b["finetune_shaped"]]
    say(f"\n  {'policy':<20}{'return':>8}{'95% CI':>20}{'env steps':>11}   (slow expert, task cost)")
    for k, v in rows:
        say(
            f"  {k:<20}{v['return']:>8.2f}   [{v['return_ci'][0]:>7.2f}, {v['return_ci'][1]:>7.2f}]"
            f"{v.get('env_steps', 0):>11}"
        )
    n = len(b["finetune"]["agreement"])
    marks = sorted({i for i in (0, 2, 5, 10, 20) if i < n} | {n - 1})
    say(f"  agreement with pi_BC on held-out expert states after update {', '.join(map(str, marks))}:")
    for k, v in [("finetune", b["finetune"])] + [(f"shaped, lambda {x['lambda']}", x) for x in b["finetune_shaped"]]:
        say(f"    {k:<18}" + " ".join(f"{v['agreement'][i]:5.2f}" for i in marks))
    say(f"\n  GAIL on the road from {g['demos']} demonstrated steps; success = total cost <= 4 of T = 50:")
    for k in ("expert", "bc", "gail", "irl_fresh"):
        say(f"    {k:<10}{g[k]['success']:>7.3f}   env steps {g[k].get('env_steps', 0)}")
    lr = g["learned_return"]
    say(
        f"  learned return: expert {lr['expert']:.1f}, initial learner {lr['initial_learner']:.1f}; "
        f"P(expert's > learner's) {g['ranking']:.3f}"
    )
    e, bc_, f, (small, large) = b["expert"], b["bc"], b["finetune"], b["finetune_shaped"]
    closer = np.mean(small["agreement"]) > np.mean(f["agreement"])
    pinned = abs(large["return"] - e["return"]) <= 0.1 * abs(e["return"]) and large["return_ci"][0] <= e["return_ci"][1]
    return [
        target(
            abs(bc_["return"] - e["return"]) <= 0.1 * abs(e["return"]),
            f"BC's return {bc_['return']:.2f} within 10% of the expert's {e['return']:.2f}",
        ),
        target(
            f["return_ci"][0] > e["return_ci"][1],
            f"fine-tuning from BC {f['return']:.2f} beats the expert, intervals apart",
        ),
        target(
            b["scratch"]["return"] < f["return"],
            f"from scratch {b['scratch']['return']:.2f} below fine-tuning, same env steps",
        ),
        target(
            closer,
            f"small lambda stays closer to the demonstrations: agreement {np.mean(small['agreement']):.2f} > "
            f"{np.mean(f['agreement']):.2f}",
        ),
        target(pinned, f"large lambda pinned to the expert's return: {large['return']:.2f}"),
        target(g["bc"]["success"] <= 0.5, f"BC from one demonstration {g['bc']['success']:.3f} <= 0.50"),
        target(
            g["gail"]["success"] - g["bc"]["success"] >= 0.2,
            f"GAIL {g['gail']['success'] - g['bc']['success']:+.3f} above BC (>= +0.20)",
        ),
        target(
            g["irl_fresh"]["success"] >= 0.8 * g["expert"]["success"],
            f"a fresh policy on the learned reward {g['irl_fresh']['success']:.3f} >= 0.8 x the expert's",
        ),
        target(
            g["ranking"] >= 0.95,
            f"the learned reward ranks expert episodes above the initial learner's ({g['ranking']:.3f})",
        ),
    ]


# ---- 11. speed ----


def best_time(fn, repeats):
    """The fastest of `repeats` calls, in seconds: the least disturbed by a shared machine."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def mlp_step(seed, reps):
    """One training step of a 2x256 MLP at batch 256, as bc runs it (the L2 head's loss and gradient written into
    the policy's buffers, then Adam), against its matrix multiplications alone, written into buffers of their
    own; and one whole bc step (the minibatch draw included) on 8192 pairs."""
    rng, (O, A, B) = np.random.default_rng(seed), (16, 4, 256)
    policy = im.Policy(im.L2Head(A), O, rng, hidden=(256, 256))
    obs, act = rng.standard_normal((B, O), dtype=np.float32), rng.standard_normal((B, A), dtype=np.float32)
    opt, grad = im.Adam(policy.params.size), np.empty_like(policy.params)

    def train_step():
        policy.head.policy_loss(policy.net, policy.params, obs, act, rng, grad, workspace=policy.workspace)
        opt.step(policy.params, grad)

    W = [w for name, w in policy.net.views(policy.params).items() if name[0] == "W"]
    h = [obs] + [rng.standard_normal((B, w.shape[1]), dtype=np.float32) for w in W]
    out = [(np.empty((B, w.shape[1]), np.float32), np.empty_like(w), np.empty((B, w.shape[0]), np.float32)) for w in W]

    def matmuls():  # forward x W, then for each layer dW = x.T d and dx = d W.T
        for i, (w, (z, dW, dx)) in enumerate(zip(W, out)):
            np.matmul(h[i], w, out=z)
            np.matmul(h[i].T, h[i + 1], out=dW)
            np.matmul(h[i + 1], w.T, out=dx)

    train_step(), matmuls()
    step, mm = np.min([[best_time(f, 1) for f in (train_step, matmuls)] for _ in range(reps)], 0)  # interleaved
    data = rng.standard_normal((8192, O), dtype=np.float32), rng.standard_normal((8192, A), dtype=np.float32)
    bc_step = best_time(lambda: im.bc(policy, *data, rng, im.TrainConfig(steps=50)), 3) / 50
    return {"ratio": step / mm, "step_seconds": step, "matmul_seconds": mm, "bc_step_seconds": bc_step}


def speed(seed, quick, figure):
    """The compiled world against plain Python, and a training step against its own matmuls. A training step
    allocates nothing large: activations and gradients live in buffers the policy owns (Buffers,
    Policy.workspace), written with out= and in place; a step that allocates its temporaries (2 MB for the
    2x256 MLP) has glibc hand them back to the system and page-fault them in again, and then costs 2.5x its
    matmuls in a fresh process. What remains beyond the matmuls is single-threaded elementwise passes (bias,
    activation and its backward, the bias gradient), some forty numpy calls of Python, and Adam's float32 loop;
    the ratio moves with the machine's own speed, so it is measured side by side in one run."""
    rng, n, reps = np.random.default_rng(seed), 4096, 5 if quick else 20
    # the compiled road step against the same step as plain Python
    x, c, r = (rng.integers(-1, 2, n) for _ in range(3))
    expert, move, u, reset = np.zeros((n, 1)), rng.uniform(-2, 2, n), rng.random((n, 3)), np.zeros(n, bool)
    args = (x, c, r, expert, move, u, reset, 0.01, 3, 0.0, 0)
    im.road_step(*args)
    compiled = best_time(lambda: im.road_step(*args), reps)
    python_step = getattr(im.road_step, "py_func", im.road_step)  # the same step, not compiled
    python = best_time(lambda: python_step(*args), reps)
    steps_per_second = {}
    for name, env in (("road", im.Road(n)), ("tree", im.Tree(n))):
        env.reset(seed=0)
        a = rng.uniform(-1, 1, (n, env.action_dim))
        env.step(a)
        steps_per_second[name] = n / best_time(lambda env=env, a=a: env.step(a), reps * 5)
    mlp = mlp_step(seed, reps * 5)
    fresh = subprocess.run([sys.executable, __file__, "--mlp-step", str(seed)], capture_output=True, text=True)
    if fresh.returncode:
        raise RuntimeError(f"the fresh-process MLP measurement failed:\n{fresh.stderr}")
    mlp_fresh = json.loads(fresh.stdout)
    # DDIM with S steps against S network forwards on the same batch
    head = im.DiffusionHead([-1, -1], [1, 1], sample_steps=10)
    policy = im.Policy(head, 2, rng, hidden=(256, 256, 256))
    states = rng.standard_normal((n, 2), dtype=np.float32)
    x_in = rng.standard_normal((n, policy.net.sizes[0]), dtype=np.float32)

    def forwards():
        for _ in range(head.sample_steps):
            im.mlp_forward(policy.net, policy.params, x_in)

    def sample():
        policy.sample(states, rng)

    sample(), forwards()  # then interleaved, the fastest of each: a slow moment of the machine hits both alike
    ddim, fwd = np.min([[best_time(f, 1) for f in (sample, forwards)] for _ in range(5 if quick else 10)], 0)
    ratio_ddim = ddim / fwd
    return {
        "env_speedup_vs_python": python / compiled,
        "env_steps_per_second": steps_per_second["road"],
        "tree_steps_per_second": steps_per_second["tree"],
        "mlp_step_over_matmul": mlp["ratio"],
        "mlp_step_over_matmul_fresh": mlp_fresh["ratio"],
        "mlp_step_seconds": mlp["step_seconds"],
        "mlp_matmul_seconds": mlp["matmul_seconds"],
        "bc_step_seconds": mlp["bc_step_seconds"],
        "ddim_over_forwards": ratio_ddim,
        "road_step_seconds": compiled,
        "road_step_python_seconds": python,
    }


def report_speed(r):
    compiled, python = 1e6 * r["road_step_seconds"], 1e3 * r["road_step_python_seconds"]
    say(f"\n  road step at n = 4096: compiled {compiled:.0f} us, the same step as plain Python {python:.1f} ms")
    road, tree = r["env_steps_per_second"], r["tree_steps_per_second"]
    say(f"  environment steps per second at n = 4096: road {road:.3g}, tree {tree:.3g}")
    step, mm, bc_step = (1e6 * r[k] for k in ("mlp_step_seconds", "mlp_matmul_seconds", "bc_step_seconds"))
    say(f"  2x256 MLP at batch 256: training step {step:.0f} us, its matmuls {mm:.0f} us, one bc step {bc_step:.0f} us")
    return [
        target(
            r["env_speedup_vs_python"] >= 100, f"compiled step {r['env_speedup_vs_python']:.0f}x plain Python (>= 100x)"
        ),
        target(
            r["mlp_step_over_matmul_fresh"] <= 1.3,
            f"2x256 MLP step {r['mlp_step_over_matmul_fresh']:.2f}x its matmuls in a fresh process (<= 1.3x); "
            f"{r['mlp_step_over_matmul']:.2f}x in this one",
        ),
        target(
            r["ddim_over_forwards"] <= 1.3,
            f"DDIM, 10 steps: {r['ddim_over_forwards']:.2f}x 10 network forwards (<= 1.3x)",
        ),
    ]


# ---- figure ----


def plot(record, figure, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import NullFormatter
    except ImportError:
        say(f"  no figure: matplotlib is not installed (pip install matplotlib), so {path} was not written")
        return
    b = record["bounds"]
    T, e = np.array(b["T"], float), b["eps"]
    fig, axes = plt.subplots(3, 3, figsize=(16, 13.5))
    styles = ("o-", "v--", "s--", "^:", "d-.", "x-")
    panels = ((axes[0, 0], 2, "J / (eps T^2): flat means quadratic"), (axes[0, 1], 1, "J / (eps T): flat means linear"))
    for ax, power, title in panels:
        norm = e * T**power
        for (name, m), style in zip(b["methods"].items(), styles):
            cost, ci = np.array(m["cost"]), np.array(m["ci"])
            ax.errorbar(T, cost / norm, yerr=np.abs(ci.T - cost) / norm, fmt=style, capsize=3, label=name)
        for key, style in (("bound_lecture", "k--"), ("bound_ross", "k:"), ("tightrope", "k-.")):
            ax.plot(T, np.array(b[key]) / norm, style, lw=1, label=key.replace("_", " "))
        ax.set(xscale="log", yscale="log", xlabel="horizon T", ylabel=title.split(":")[0], title=title)
        ax.set_xticks(T, [str(int(t)) for t in T])
        ax.xaxis.set_minor_formatter(NullFormatter())
    axes[0, 0].legend(fontsize=7)
    ax, labels = axes[0, 2], record["labels"]
    for (name, m), style in zip(labels["methods"].items(), styles):
        cost, ci = np.array(m["cost"]), np.array(m["ci"])
        ax.errorbar(m["labels"], cost, yerr=np.abs(ci.T - cost), fmt=style, capsize=3, label=name)
    ax.set(xscale="log", yscale="log", xlabel="expert labels used", ylabel=f"cost J at T = {labels['T']}")
    ax.set_title("what each expert label buys (95% CIs)", fontsize=10)
    ax.legend(fontsize=7)
    ax = axes[1, 0]
    for name, samples in figure["samples"].items():
        ax.hist(np.array(samples)[:, 0], bins=41, range=(-0.5, 0.5), histtype="step", lw=1.5, label=name)
    ax.set(xlabel="sideways part of the sampled action", ylabel="samples (of 4096)", yscale="log")
    ax.set_title("actions sampled at the fork (0, -0.8); demonstrations: +-0.217", fontsize=10)
    ax.legend(fontsize=7)
    ax = axes[1, 1]
    for name, m in record["memory"]["causal_confusion"].items():
        err, cost = m["heldout_error"], m["cost"]
        xerr, yerr = (
            np.abs(np.array(m["heldout_error_ci"]) - err)[:, None],
            np.abs(np.array(m["cost_ci"]) - cost)[:, None],
        )
        ax.errorbar(err, cost, xerr=xerr, yerr=yerr, fmt="o" if "plain" in name else "s", capsize=3, label=name)
    ax.set(xlabel="0-1 error on held-out expert states", ylabel="on-policy cost J (T = 50)")
    ax.set_title("causal confusion: the brake light lowers the error, raises the cost", fontsize=10)
    ax.legend(fontsize=7)
    ax, rl = axes[1, 2], record["rl"]
    for name, m in [("finetune (lambda 0)", rl["finetune"])] + [
        (f"shaped, lambda {x['lambda']}", x) for x in rl["finetune_shaped"]
    ]:
        ax.plot(m["agreement"], label=name)
    ax.set(xlabel="PPO update", ylabel="agreement with pi_BC on expert states", ylim=(0, 1.05))
    ax.set_title("fine-tuning leaves the demonstrations; lambda log pi_BC holds it", fontsize=10)
    ax.legend(fontsize=7)
    ax, c = axes[2, 0], record["control"]
    heads, x = list(c["heads"]), np.arange(len(c["heads"]))
    for shift, kind in ((-0.18, "bc"), (0.18, "dagger")):
        ret = np.array([c["heads"][h][kind]["return"] for h in heads])
        ci = np.array([c["heads"][h][kind]["return_ci"] for h in heads])
        ax.errorbar(x + shift, ret, yerr=np.abs(ci.T - ret), fmt="o", capsize=3, label=kind)
    ax.axhline(c["expert"]["return"], color="k", lw=1, label="expert")
    ax.axhline(1.15 * c["expert"]["return"], color="k", ls=":", lw=1, label="expert - 15%")
    ax.set_xticks(x, heads, fontsize=8)
    ax.set(ylabel="return (Pendulum-v1)")
    ax.set_title("every head on a swing-up, BC and DAgger on 4,000 labels", fontsize=10)
    ax.legend(fontsize=7)
    ax, ch = axes[2, 1], record["chunks"]
    kinds = list(next(iter(ch["heads"].values())))
    for shift, name in zip((-0.15, 0.15), ch["heads"]):
        h = ch["heads"][name]
        s = np.array([h[k]["success"] for k in kinds])
        ax.errorbar(np.arange(len(kinds)) + shift, s, yerr=np.abs(np.array([h[k]["success_ci"] for k in kinds]).T - s),
                    fmt="o", capsize=3, label=name)  # fmt: skip
    names = {"per_step": "sampled per step", "chunked": f"whole chunks of {ch['k']}"}
    ax.set_xticks(np.arange(len(kinds)), [names.get(k, k.replace("m", "first m = ")) for k in kinds])
    ax.set(ylabel="success past the tree (coarse sensor)", ylim=(-0.05, 1.05))
    ax.set_title("chunks commit to a side; sampled per step, heads dither", fontsize=10)
    ax.legend(fontsize=7)
    ax = axes[2, 2]
    ax.imshow(figure["frame"], cmap="gray")
    ax.set_title(f"third person: a video's last frame (goals found {record['third_person']['tcn']['success']:.2f})",
                 fontsize=10)  # fmt: skip
    ax.set(xticks=[], yticks=[])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    say(f"  figure written to {path}")


# ---- main ----

SECTIONS = [  # JSON key (None: the run's own top-level keys), title, run(seed, quick, figure), report(record)
    (
        "bounds",
        "Compounding error on the road: six ways to get data, one label budget",
        compounding,
        report_compounding,
    ),
    ("labels", "What each expert label buys: cost against labels on the road", labels, report_labels),
    ("multimodal", "Expressive heads on the tree's bimodal demonstrations", multimodal, report_multimodal),
    ("control", "Continuous control: every head imitates a pendulum swing-up", control, report_control),
    ("memory", "Memory: causal confusion, a non-Markovian expert, a cue beyond any window", memory, report_memory),
    ("chunks", "Action chunks: commit to a mode, and an open loop cannot react", chunks, report_chunks),
    ("hindsight", "Hindsight relabeling on the goal task", hindsight, report_hindsight),
    (None, "Without the expert's actions: BCO and one-shot imitation", without_actions, report_without_actions),
    ("third_person", "Third-person imitation through a time-contrastive embedding", third_person, report_third_person),
    (None, "Imitation and RL: beyond the expert, a shaped reward, and GAIL", rl, report_rl),
    ("speed", "Speed, measured side by side after warm-up", speed, report_speed),
]
# With --jobs above 1, sections 1-10 run in worker processes, one group per task, about the longest first so that
# the workers finish together; a group shares one figure (section 2 reuses section 1's policies). Every number is the
# one a single process gives, seed for seed (each section draws from its own generators); the per-section seconds
# (and section 3's timings per head) are then each worker's own, beside another busy core. Speed, after them all,
# runs alone: its ratios are timings, and a busy other core would disturb them.
GROUPS = [(1, 2), (3,), (5,), (4,), (6,), (10,), (8,), (7,), (9,)]
CPUS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def markdown(r):
    """The README's results from a record (bench.json): one compact table per section."""

    def table(title, header, rows, note=""):
        lines = [f"**{title}**" + (f" {note}" if note else ""), "", "| " + " | ".join(header) + " |"]
        lines += ["|" + "---|" * len(header)] + ["| " + " | ".join(map(str, row)) + " |" for row in rows]
        return "\n".join(lines) + "\n"

    def ci(x, key="ci", f=".3f"):
        lo, hi = x[key]
        return f"[{lo:{f}}, {hi:{f}}]"

    b, lab, mm = r["bounds"], r["labels"], r["multimodal"]
    out = [
        table(
            "1. Compounding error (the road, eps = 0.005, 16,384 labels each).",
            ["method", *[f"J at T = {T}" for T in b["T"]], "log-log slope", "labels"],
            [
                [
                    k,
                    *[f"{c:.3f}" for c in m["cost"]],
                    f"{m['slope']:.2f} {ci(m, 'slope_ci', '.2f')}",
                    m["expert_labels"],
                ]
                for k, m in b["methods"].items()
            ]
            + [["tightrope eps T(T+1)/2", *[f"{c:.3f}" for c in b["tightrope"]], "", ""]],
        ),
        table(
            "2. What each label buys (the road at T = 32): cost at each budget, with the labels used.",
            ["method", *[f"budget {x}" for x in lab["budgets"]]],
            [[k, *[f"{c:.3f} ({n})" for c, n in zip(m["cost"], m["labels"])]] for k, m in lab["methods"].items()],
        ),
        table(
            "3. Multimodal demonstrations (the tree).",
            ["head", "success", "left", "fork W1", "midpoint", "held-out NLL"],
            [
                [
                    k,
                    f"{m['success']:.3f}",
                    "-" if m["left"] is None else f"{m['left']:.2f}",
                    f"{m['fork_w1']:.3f}",
                    f"{m['fork_midpoint']:.3f}",
                    "-" if m["nll"] is None else f"{m['nll']:.2f}",
                ]
                for k, m in mm.items()
            ],
            f"CVAE: a z held fixed keeps to one side in {mm['cvae']['z_consistency']:.2f} of its episodes; "
            f"{mm['cvae']['z_left']:.2f} of z's go left.",
        ),
    ]
    c = r["control"]
    out.append(
        table(
            f"4. Continuous control (Pendulum-v1, {c['labels']} labels; the expert {c['expert']['return']:.0f} "
            f"{ci(c['expert'], 'return_ci', '.0f')}).",
            ["head", "BC return", "DAgger return"],
            [
                [
                    k,
                    f"{m['bc']['return']:.0f} {ci(m['bc'], 'return_ci', '.0f')}",
                    f"{m['dagger']['return']:.0f} {ci(m['dagger'], 'return_ci', '.0f')}",
                ]
                for k, m in c["heads"].items()
            ],
        )
    )
    cc, nm, lm = r["memory"]["causal_confusion"], r["memory"]["non_markovian"], r["memory"]["long"]
    rows = [[k, f"{v['heldout_error']:.3f}", f"{v['cost']:.2f} {ci(v, 'cost_ci', '.2f')}"] for k, v in cc.items()]
    out.append(
        table(
            "5. Memory. Causal confusion (the brake light is the previous move):",
            ["method", "held-out error", "cost J"],
            rows,
        )
    )
    rows = [
        ["cued tree, no memory", f"{nm['memoryless']['success']:.3f} {ci(nm['memoryless'], 'success_ci')}"],
        ["cued tree, last 8 observations", f"{nm['history']['success']:.3f} {ci(nm['history'], 'success_ci')}"],
        [
            f"cue {lm['cue_steps']} steps back, last {lm['history']['k']} observations",
            f"{lm['history']['success']:.3f} {ci(lm['history'], 'success_ci')}",
        ],
        [
            f"cue {lm['cue_steps']} steps back, a GRU",
            f"{lm['recurrent']['success']:.3f} {ci(lm['recurrent'], 'success_ci')}",
        ],
    ]
    out.append(table("... and a cue shown only on the first step:", ["policy", "success"], rows))
    ch = r["chunks"]
    rows = [
        [
            name,
            *[
                f"{h[k]['success']:.3f} ({h[k]['undecided']:.2f})"
                for k in ("per_step", *["chunked" if m == CHUNK_K else f"m{m}" for m in MS])
            ],
        ]
        for name, h in ch["heads"].items()
    ]
    out.append(
        table(
            f"6. Action chunks ({ch['task']}): success (share undecided at the tree).",
            ["head", "per step", *[f"chunks, m = {m}" for m in MS]],
            rows,
        )
    )
    road = ch["road"]
    out.append(
        table(
            f"... and on the road (k = {road['k']}), where a new reading arrives every step:",
            ["steps executed per prediction m", *map(str, road["m"])],
            [["cost J", *[f"{x:.2f}" for x in road["cost"]]]],
        )
    )
    pc = ch["control"]
    rows = [
        [
            k,
            f"{v['bc']['return']:.0f} {ci(v['bc'], 'return_ci', '.0f')}",
            f"{v['return']:.0f} {ci(v, 'return_ci', '.0f')}",
            f"{v['receding']['return']:.0f}",
        ]
        for k, v in pc.items()
        if isinstance(v, dict) and "data" in v
    ]
    title = f"... and on the pendulum (the expert {pc['expert']['return']:.0f}), chunks of {pc['k']}, ACT's ensembling:"
    out.append(table(title, ["head", "BC data", "DAgger data", "DAgger, whole chunks open loop"], rows))
    h = r["hindsight"]
    out.append(
        table(
            "7. Hindsight relabeling (goals).",
            ["policy", "held-out goals", "perturbed starts"],
            [[k, f"{v['success']:.3f}", f"{v['perturbed_success']:.3f}"] for k, v in h.items()],
        )
    )
    rows = [[k, f"{v['success']:.3f} {ci(v, 'success_ci')}"] for k, v in (r["observation"] | r["one_shot"]).items()]
    out.append(table("8. Without the expert's actions (unseen goals).", ["policy", "success"], rows))
    t = r["third_person"]
    rows = [[k, f"{t[k]['success']:.3f} {ci(t[k], 'success_ci')}"] for k in ("tcn", "unaligned", "first_person")]
    out.append(
        table(
            f"9. Third-person imitation (one video per unseen goal; alignment {t['alignment']:.3f}).",
            ["goal from", "success"],
            rows,
        )
    )
    rl, g = r["rl"], r["gail"]
    rows = [[k, f"{v['return']:.2f} {ci(v, 'return_ci', '.2f')}"] for k, v in rl.items() if k != "finetune_shaped"]
    rows += [
        [f"shaped, lambda {v['lambda']}", f"{v['return']:.2f} {ci(v, 'return_ci', '.2f')}"]
        for v in rl["finetune_shaped"]
    ]
    out.append(table("10. Imitation and RL (a slow expert, the task's own cost).", ["policy", "return"], rows))
    rows = [[k, f"{g[k]['success']:.3f}"] for k in ("expert", "bc", "gail", "irl_fresh")]
    out.append(table(f"... GAIL from {g['demos']} demonstrated steps (success):", ["policy", "success"], rows))
    s = r["speed"]
    rows = [
        ["compiled road step against plain Python", f"{s['env_speedup_vs_python']:.0f}x"],
        ["2x256 MLP training step against its matmuls (fresh process)", f"{s['mlp_step_over_matmul_fresh']:.2f}x"],
        ["DDIM with 10 steps against 10 network forwards", f"{s['ddim_over_forwards']:.2f}x"],
    ]
    out.append(table("11. Speed.", ["what", "ratio"], rows))
    return "\n".join(out)


def run_group(group, seed, quick):
    """Run sections `group` (their numbers) in order in this process, sharing one figure, with each section's
    progress lines captured: ([(number, part, printed text, seconds)], the figure's entries the plot reads)."""
    figure, out = {}, []
    for i in group:
        text, start = io.StringIO(), time.perf_counter()
        with contextlib.redirect_stdout(text):
            part = SECTIONS[i - 1][2](seed, quick, figure)
        out.append((i, part, text.getvalue(), time.perf_counter() - start))
    figure.pop("road32", None)  # section 2's input (trained policies), not the plot's
    return out, figure


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a reduced run of every section (CI-sized)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=CPUS, help=f"worker processes (default: the {CPUS} CPUs here)")
    parser.add_argument("--json", metavar="PATH", help="write the record as JSON")
    parser.add_argument("--plot", metavar="PATH", help="draw the figure (needs matplotlib)")
    parser.add_argument("--markdown", metavar="JSON", help="print the README's results tables from a record")
    parser.add_argument("--mlp-step", metavar="SEED", type=int, help=argparse.SUPPRESS)  # speed's fresh process
    args = parser.parse_args()
    if args.markdown:
        with open(args.markdown) as f:
            print(markdown(json.load(f)))
        return
    if args.mlp_step is not None:
        print(json.dumps(mlp_step(args.mlp_step, 100)))
        return
    start = time.perf_counter()
    record, verdicts, figure = {"seed": args.seed, "quick": args.quick, "section_seconds": {}}, [], {}
    pool, tasks, done = None, {}, {}
    if args.jobs > 1:  # GROUPS in worker processes, side by side; every other section after them, alone
        context = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")  # fork: no re-import
        pool = context.Pool(min(args.jobs, len(GROUPS)))
        for group in GROUPS:
            task = pool.apply_async(run_group, (group, args.seed, args.quick))
            tasks |= dict.fromkeys(group, task)
    try:
        for i, (key, title, run, report) in enumerate(SECTIONS, 1):
            say(f"{chr(10) if i > 1 else ''}{i}. {title}")
            if pool is not None and i not in tasks:  # the groups (all before it) are done: it runs alone, in a worker
                tasks[i] = pool.apply_async(run_group, ((i,), args.seed, args.quick))
            if i in tasks:
                if i not in done:
                    results, part_figure = tasks[i].get()
                    figure |= part_figure
                    done |= {n: (part, text, seconds) for n, part, text, seconds in results}
                part, text, seconds = done.pop(i)
                print(text, end="", flush=True)
            else:
                section_start = time.perf_counter()
                part = run(args.seed, args.quick, figure)
                seconds = time.perf_counter() - section_start
            record |= part if key is None else {key: part}  # a section with several parts gives top-level keys
            record["section_seconds"][str(i)] = seconds
            verdicts += report(part)
    finally:
        if pool is not None:
            pool.terminate()
    record["seconds"] = time.perf_counter() - start
    say(f"\nTargets ({'quick run: reduced budgets, so misses are expected' if args.quick else 'full run'}):")
    for line in verdicts:
        say("  " + line)
    say(f"\nwall time {record['seconds']:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(record, f, indent=1)
        say(f"record written to {args.json}")
    if args.plot:
        plot(record, figure, args.plot)


if __name__ == "__main__":
    main()
