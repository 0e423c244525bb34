"""Run under py-rattler 0.22.0: fetch a channel's linux-64 repodata, print what it holds."""

import asyncio
import json
import sys

import rattler


async def main(url: str, cache: str) -> None:
    found = await rattler.fetch_repo_data(
        channels=[rattler.Channel(url)],
        platforms=[rattler.Platform("linux-64")],
        cache_path=cache,
        callback=None,
    )
    names, files = set(), []
    for sparse in found:
        for name in sparse.package_names():
            for record in sparse.load_records(rattler.PackageName(name)):
                names.add(record.name.normalized)
                files.append(record.file_name)
    print(json.dumps({"names": sorted(names), "linux-64": sorted(files)}), flush=True)


asyncio.run(main(sys.argv[1], sys.argv[2]))
