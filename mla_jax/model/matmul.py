"""Two-operand einsums in the compute dtype, with float32 accumulation, and their gradients.

`einsum(equation, x, y, dtype)` casts both operands to `dtype` and accumulates and returns
float32 (`preferred_element_type`), so bfloat16 operands use the CPU's bfloat16 matrix
instructions while sums stay float32. Its gradient is written out here instead of left to JAX:

- JAX's own transpose of a bfloat16 product multiplies the float32 cotangent with a bfloat16
  operand, and XLA on CPU computes that mixed product in float32. Here the cotangent is cast
  to the compute dtype once, so both gradient products run in it, accumulating in float32.
- XLA on CPU (jaxlib 0.10.2) hands a product to YNNPACK only if the left operand's contracted
  dims are its last ones; otherwise Eigen runs it. The weight gradient x^T @ g of every
  projection is such a product, and so are the key and value gradients of attention. Here
  the operand whose contracted dims are not last is transposed first, into a copy that XLA
  cannot fold back into the product (`optimization_barrier`), so YNNPACK runs it.

Equations are plain contractions: every index of an operand also appears in the other operand
or in the output, and no index repeats within an operand. Gradients come back in the dtypes of
the operands.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


def einsum(equation: str, x: jax.Array, y: jax.Array, dtype) -> jax.Array:
    """Return einsum(equation, x, y) computed in `dtype`, accumulated and returned in float32."""
    _check_equation(equation)
    return _einsum(equation, jnp.dtype(dtype), jnp.dtype(x.dtype), jnp.dtype(y.dtype), x, y)


def _check_equation(equation: str) -> None:
    inputs, _, output = equation.partition("->")
    specs = inputs.split(",")
    if len(specs) != 2 or not output:
        raise ValueError(f"einsum equation {equation!r} must have the form 'ab,bc->ac'.")
    for spec, other in ((specs[0], specs[1]), (specs[1], specs[0])):
        if len(set(spec)) != len(spec) or any(c not in other + output for c in spec):
            raise ValueError(
                f"einsum equation {equation!r} is not a plain contraction: each index of an "
                "operand must appear once in it and also in the other operand or the output."
            )


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3))
def _einsum(equation, dtype, x_dtype, y_dtype, x, y):
    del x_dtype, y_dtype  # Used by the gradient only.
    return contract(equation, x.astype(dtype), y.astype(dtype))


def _einsum_forward(equation, dtype, x_dtype, y_dtype, x, y):
    del x_dtype, y_dtype
    x, y = x.astype(dtype), y.astype(dtype)
    return contract(equation, x, y), (x, y)


def _einsum_backward(equation, dtype, x_dtype, y_dtype, residuals, grad):
    x, y = residuals
    inputs, output = equation.split("->")
    x_spec, y_spec = inputs.split(",")
    grad = grad.astype(dtype)
    grad_x = contract(f"{output},{y_spec}->{x_spec}", grad, y)
    grad_y = contract(f"{x_spec},{output}->{y_spec}", x, grad)
    return grad_x.astype(x_dtype), grad_y.astype(y_dtype)


_einsum.defvjp(_einsum_forward, _einsum_backward)


def contract(equation: str, a: jax.Array, b: jax.Array) -> jax.Array:
    """Return einsum(equation, a, b) in float32 from operands of one dtype.

    The left operand of the product is the one whose contracted dims are already last, else
    the smaller one, transposed so that they are.
    """
    inputs, output = equation.split("->")
    a_spec, b_spec = inputs.split(",")
    if not _contracted_last(a_spec, b_spec, output) and (
        _contracted_last(b_spec, a_spec, output) or b.size < a.size
    ):
        (a_spec, a), (b_spec, b) = (b_spec, b), (a_spec, a)
    if not _contracted_last(a_spec, b_spec, output):
        a_spec, a = _contracted_dims_last(a_spec, a, b_spec, output)
    return _dot_general(a_spec, a, b_spec, b, output)


def _dot_general(a_spec: str, a: jax.Array, b_spec: str, b: jax.Array, output: str) -> jax.Array:
    """lax.dot_general with `a` as its left operand, which jnp.einsum does not promise."""
    batch = [c for c in a_spec if c in b_spec and c in output]
    contracted = [c for c in a_spec if c not in output]
    dims = (
        (tuple(a_spec.index(c) for c in contracted), tuple(b_spec.index(c) for c in contracted)),
        (tuple(a_spec.index(c) for c in batch), tuple(b_spec.index(c) for c in batch)),
    )
    # For 16-bit operands the precision only names the algorithm. An explicit DEFAULT keeps
    # jax_default_matmul_precision="highest" (the tests' setting) from moving the product off
    # YNNPACK, onto an Eigen kernel that rejects bfloat16 x bfloat16 = float32.
    precision = None if a.dtype == jnp.float32 else jax.lax.Precision.DEFAULT
    out = jax.lax.dot_general(a, b, dims, precision=precision, preferred_element_type=jnp.float32)
    # dot_general returns (batch, free dims of a, free dims of b).
    out_spec = (
        batch + [c for c in a_spec if c not in b_spec] + [c for c in b_spec if c not in a_spec]
    )
    if out_spec == list(output):
        return out
    # Without the barrier, XLA folds the transpose into the product by swapping its operands,
    # which undoes the choice of the left operand above.
    out = jax.lax.optimization_barrier(out)
    return jnp.transpose(out, [out_spec.index(c) for c in output])


def _contracted_last(spec: str, other: str, output: str) -> bool:
    """Return True if the contracted dims of spec are its last ones once batch dims move first.

    XLA moves batch dims first on its own, but leaves the contracted dims where they are.
    """
    rest = "".join(c for c in spec if not (c in other and c in output))
    return rest.endswith("".join(c for c in spec if c not in output))


def _contracted_dims_last(spec: str, x: jax.Array, other: str, output: str):
    """Transpose x to (batch, free, contracted) dims in a copy XLA keeps as it is."""
    batch = [c for c in spec if c in other and c in output]
    free = [c for c in spec if c not in other]
    contracted = [c for c in spec if c not in output]
    order = batch + free + contracted
    transposed = jnp.transpose(x, [spec.index(c) for c in order])
    return "".join(order), jax.lax.optimization_barrier(transposed)
