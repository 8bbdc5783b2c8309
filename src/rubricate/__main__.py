from rubricate.cli import main

main()
