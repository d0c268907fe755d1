"""Client-step variants measured in one process (how the CPU defaults were chosen).

Usage: python benchmarks/client_step_profile.py CONV1+CONV2+POOL[,...]
  CONV*: im2col | taps (k*k shifted matmuls) | bcast | patches (conv_general_dilated_patches) | lax
  POOL: old (reshape-max, JAX's tie-splitting gradient) | pool4 | late (pool before bias+ReLU)
        | cpool (custom first-max gradient) | clate | late4
Env: C=clients (vmap, or lax.map with MAP=batch_size), R=interleaved repeats.
Prints per client-step wall median, wall min and process CPU-time median (robust under load).
A scratch tool, kept so the README numbers can be reproduced.
"""
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import optax

B=32
def im2col(x, k):
    _kh, _kw, cin, cout = k.shape
    p = jnp.pad(x, ((0,0),(1,1),(1,1),(0,0))); H,W=x.shape[1],x.shape[2]
    pt = jnp.concatenate([p[:,a:a+H,b:b+W,:] for a in range(3) for b in range(3)], -1)
    return pt @ k.reshape(9*cin, cout)
def taps(x, k):  # sum of k*k shifted matmuls
    _kh, _kw, _cin, _cout = k.shape
    p = jnp.pad(x, ((0,0),(1,1),(1,1),(0,0))); H,W=x.shape[1],x.shape[2]
    return sum(p[:,a:a+H,b:b+W,:] @ k[a,b] for a in range(3) for b in range(3))
def bcast(x, k):  # cin=1 elementwise
    p = jnp.pad(x, ((0,0),(1,1),(1,1),(0,0))); H,W=x.shape[1],x.shape[2]
    return sum(p[:,a:a+H,b:b+W,:] * k[a,b,0] for a in range(3) for b in range(3))
def patches(x, k):
    _kh, _kw, cin, cout = k.shape
    pt = jax.lax.conv_general_dilated_patches(x, (3,3), (1,1), "SAME", dimension_numbers=("NHWC","HWIO","NHWC"))
    # patches channel order: cin-major then taps
    return pt @ jnp.transpose(k, (2,0,1,3)).reshape(9*cin, cout)
def lax(x,k):
    return jax.lax.conv_general_dilated(x,k,(1,1),"SAME",dimension_numbers=("NHWC","HWIO","NHWC"))
def pool(x):
    n,h,w,c=x.shape; return x.reshape(n,h//2,2,w//2,2,c).max(axis=(2,4))
IMPL = {"im2col": im2col, "taps": taps, "bcast": bcast, "patches": patches, "lax": lax}

def pool4(x):
    return jnp.maximum(jnp.maximum(x[:, 0::2, 0::2], x[:, 0::2, 1::2]), jnp.maximum(x[:, 1::2, 0::2], x[:, 1::2, 1::2]))
@jax.custom_vjp
def cpool(x):
    return pool(x)
def cpool_fwd(x):
    y = pool(x); return y, (x, y)
def cpool_bwd(res, g):
    x, y = res
    n,h,w,c = x.shape
    up = lambda t: jnp.broadcast_to(t[:, :, None, :, None, :], (n, h//2, 2, w//2, 2, c)).reshape(n,h,w,c)
    return (jnp.where(x == up(y), up(g), 0.0),)
cpool.defvjp(cpool_fwd, cpool_bwd)
def block(x,k,b,c,PM):
    if PM=="cpool": return cpool(jax.nn.relu(IMPL[c](x,k)+b))
    if PM=="clate": return jax.nn.relu(cpool(IMPL[c](x,k))+b)
    if PM=="old": return pool(jax.nn.relu(IMPL[c](x,k)+b))
    if PM=="pool4": return pool4(jax.nn.relu(IMPL[c](x,k)+b))
    if PM=="late": return jax.nn.relu(pool(IMPL[c](x,k))+b)
    if PM=="late4": return jax.nn.relu(pool4(IMPL[c](x,k))+b)
def model(p, x, c1, c2, pm):
    x = block(x, p["k1"], p["b1"], c1, pm)
    x = block(x, p["k2"], p["b2"], c2, pm)
    x = jnp.transpose(x,(0,3,1,2)).reshape(x.shape[0],-1)
    return x @ p["w"] + p["b"]

key=jax.random.key(0)
ks=jax.random.split(key,4)
p = {"k1": jax.random.normal(ks[0],(3,3,1,16))*.3, "b1": jnp.zeros(16), "k2": jax.random.normal(ks[1],(3,3,16,32))*.1, "b2": jnp.zeros(32), "w": jax.random.normal(ks[2],(1568,10))*.03, "b": jnp.zeros(10)}
S=40
C=int(os.environ.get('C','1')); S=S//C
xs = jax.random.uniform(ks[3],(C,S,B,28,28,1)); ys = jax.random.randint(ks[3],(C,S,B),0,10)
opt = optax.adam(1e-3)
def train(p, xs, ys, c1, c2, pm):
    def step(c, b):
        p, s = c; x, y = b
        g = jax.grad(lambda p: optax.softmax_cross_entropy_with_integer_labels(model(p,x,c1,c2,pm), y).mean())(p)
        u, s = opt.update(g, s, p); return (optax.apply_updates(p,u), s), None
    one = lambda xs, ys: jax.lax.scan(step, (p, opt.init(p)), (xs, ys))[0][0]
    return jax.vmap(one)(xs, ys) if os.environ.get('MAP') is None else jax.lax.map(lambda a: one(*a), (xs, ys), batch_size=int(os.environ['MAP']))
ref=None
combos=[c.split("+") for c in sys.argv[1].split(",")]
comp={}
for c1,c2,pm in combos:
    comp[(c1,c2,pm)] = jax.jit(train, static_argnums=(3,4,5)).lower(p,xs,ys,c1,c2,pm).compile()
    out = comp[(c1,c2,pm)](p,xs,ys)
    if ref is None: ref=out
    print(c1,c2,pm,"maxdiff", max(float(jnp.abs(a-b).max()) for a,b in zip(jax.tree.leaves(ref), jax.tree.leaves(out))))
ts={k:[] for k in comp}; cp={k:[] for k in comp}
for r in range(int(os.environ.get('R','7'))):
    for k,c in comp.items():
        t=time.perf_counter(); q=time.process_time(); jax.block_until_ready(c(p,xs,ys)); ts[k].append(time.perf_counter()-t); cp[k].append(time.process_time()-q)
for k,v in ts.items(): print(k, f"{1e3*statistics.median(v)/(S*C):.2f} ms/step  min {1e3*min(v)/(S*C):.2f}  cpu med {1e3*statistics.median(cp[k])/(S*C):.2f}")
