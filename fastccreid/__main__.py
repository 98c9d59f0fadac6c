from fastccreid.cli import main

raise SystemExit(main())
