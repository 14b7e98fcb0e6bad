"""Knowledge-distillation loss reference values, computed with NumPy in float64 straight
from the definitions, independent of ponder's Rust code. Writes
trainer/tests/fixtures/kd_loss.json (checked by trainer/tests/kd_loss.rs).

Run:  python3 scripts/make_kd_fixture.py   (needs only numpy)

Definitions (p = teacher, q = student, both softmax(logits / T) over the vocabulary):
  forward KL  KL(p || q) = sum_v p_v (log p_v - log q_v)
  reverse KL  KL(q || p) = sum_v q_v (log q_v - log p_v)
  JSD(beta)   beta KL(p || m) + (1 - beta) KL(q || m),  m = beta p + (1 - beta) q  (GKD)
with 0 log 0 = 0. From a top-k cache (the teacher's k most likely tokens at temperature T):
  tail = "bucket":      both distributions coarsened to k + 1 outcomes, the k cached tokens
                        and "any other token" (its mass: the sum of the rest); the divergence
                        of the coarsened pair (no tail outcome when k covers the vocabulary)
  tail = "renormalize": the teacher's top-k probabilities divided by their sum, 0 elsewhere;
                        the divergence against the student's full distribution
The gradients are central finite differences (step 1e-6) of the mean loss over unmasked
positions with respect to the student's logits.
"""
import json
import os

import numpy as np

rng = np.random.default_rng(20240512)
V, P = 11, 7
zt = rng.normal(0.0, 2.0, size=(P, V))
zs = rng.normal(0.0, 1.5, size=(P, V))
mask = np.array([1, 1, 0, 1, 1, 1, 0], dtype=np.float64)


def log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def kl(p, q):
    """sum p (log p - log q) over the last axis, 0 log 0 = 0; inf where p > 0 = q."""
    out = np.zeros(p.shape[:-1])
    for idx in np.ndindex(*p.shape[:-1]):
        s = 0.0
        for a, b in zip(p[idx], q[idx]):
            if a > 0:
                s += np.inf if b == 0 else a * (np.log(a) - np.log(b))
        out[idx] = s
    return out


def div(p, q, kind, beta):
    if kind == "forward_kl":
        return kl(p, q)
    if kind == "reverse_kl":
        return kl(q, p)
    m = beta * p + (1 - beta) * q
    return beta * kl(p, m) + (1 - beta) * kl(q, m)


def per_position(zs_, kind, beta, temp, k=None, tail=None):
    p = np.exp(log_softmax(zt / temp))
    q = np.exp(log_softmax(zs_ / temp))
    if k is None:
        return div(p, q, kind, beta)
    out = np.zeros(P)
    for i in range(P):
        ids = np.argsort(-p[i], kind="stable")[:k]
        rest = np.setdiff1d(np.arange(V), ids)
        if tail == "bucket":
            pc = np.concatenate([p[i, ids], [p[i, rest].sum()]]) if len(rest) else p[i, ids]
            qc = np.concatenate([q[i, ids], [q[i, rest].sum()]]) if len(rest) else q[i, ids]
            out[i] = div(pc[None], qc[None], kind, beta)[0]
        else:
            r = np.zeros(V)
            r[ids] = p[i, ids] / p[i, ids].sum()
            out[i] = div(r[None], q[i][None], kind, beta)[0]
    return out


def mean_loss(zs_, **kw):
    return float((per_position(zs_, **kw) * mask).sum() / mask.sum())


def grad(**kw):
    g = np.zeros_like(zs)
    h = 1e-6
    for i in range(P):
        for v in range(V):
            a, b = zs.copy(), zs.copy()
            a[i, v] += h
            b[i, v] -= h
            g[i, v] = (mean_loss(a, **kw) - mean_loss(b, **kw)) / (2 * h)
    return g


cases = []
for temp in [1.0, 2.0]:
    specs = [("forward_kl", None), ("reverse_kl", None)] + [("jsd", b) for b in [0.1, 0.5, 0.9]]
    for kind, beta in specs:
        caches = [(None, None), (3, "bucket"), (V, "bucket"), (3, "renormalize"), (V, "renormalize")]
        for k, tail in caches:
            if kind == "reverse_kl" and tail == "renormalize" and k < V:
                continue  # infinite: the renormalised teacher is 0 where the student is not
            kw = dict(kind=kind, beta=0.0 if beta is None else beta, temp=temp, k=k, tail=tail)
            cases.append({
                "divergence": kind, "beta": beta, "temperature": temp, "top_k": k, "tail": tail,
                "per_position": per_position(zs, **kw).tolist(),
                "loss": mean_loss(zs, **kw),
                "grad": grad(**kw).tolist(),
            })

# The cache itself: top-k teacher log-probs at T = 2 and the log of the tail's mass.
lp2 = log_softmax(zt / 2.0)
order = np.argsort(-lp2, axis=-1, kind="stable")[:, :3]
tail_mass = np.array([np.exp(lp2[i, np.setdiff1d(np.arange(V), order[i])]).sum() for i in range(P)])

out = {
    "vocab": V, "teacher_logits": zt.tolist(), "student_logits": zs.tolist(), "mask": mask.tolist(),
    "cache_t2_k3": {"ids": order.tolist(), "logprobs": np.take_along_axis(lp2, order, -1).tolist(), "tail_logmass": np.log(tail_mass).tolist()},
    "cases": cases,
}
path = os.path.join(os.path.dirname(__file__), "..", "trainer", "tests", "fixtures", "kd_loss.json")
with open(path, "w") as f:
    json.dump(out, f)
print("wrote", os.path.normpath(path), len(cases), "cases")
