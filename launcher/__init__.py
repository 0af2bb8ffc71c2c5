"""The `cityscale` command line: one entry point that dispatches to each service's `main(argv)`."""
