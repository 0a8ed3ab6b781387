"""Inverse-curvature products: solvers (Cholesky, CG, LiSSA, DataInf, power iteration), one ``inverse(...)``
over the training set (inverse), (E)K-FAC (kfac) and the validation curvature of VM/FVM (val_inverse)."""
