from mtnsails.cli import main

raise SystemExit(main())
