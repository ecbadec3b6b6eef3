"""`python -m cxrbench` and `torchrun -m cxrbench train ...` enter here."""

from cxrbench.cli import main

if __name__ == "__main__":
    main()
