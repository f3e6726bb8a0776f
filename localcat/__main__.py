from localcat.cli import main

main()
