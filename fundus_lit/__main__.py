from fundus_lit.cli import main

main()
