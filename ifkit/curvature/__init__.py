"""Inverse curvatures: the solvers (Cholesky, CG, LiSSA, power iteration), each curvature once as an object with
solve / quad / quad_sets (forms; val_inverse: the low-rank forms over S_val; kfac: (E)K-FAC) and one factory
(inverse: ``training_curvature``, ``validation_curvature``), the only place a curvature name is dispatched."""
