from gridtokenx.cli import main

main()
