"""The toy world the demo model knows: drawing it (world), judging pictures of it (judge), measuring (eval)."""
