from snptool.cli import main

main()
