from discoveryctl.cli import main

main()
