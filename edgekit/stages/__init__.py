"""Model -> model transforms run between load and quantize: prune, distill, lowrank, sparsity."""
