"""python -m lit_imit -> the LightningCLI (DDP relaunches this module once per extra rank)."""

from lit_imit.cli import main

if __name__ == "__main__":
    main()
