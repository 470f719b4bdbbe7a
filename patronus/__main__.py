from patronus.cli import main

raise SystemExit(main())
