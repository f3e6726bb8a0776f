from localcat.cli import main

# Guarded: multiprocessing (forkserver, spawn) imports the main module again in its helpers.
if __name__ == "__main__":
    main()
