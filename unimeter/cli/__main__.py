from unimeter.cli.main import main

main()
