"""A Beam filesystem for tests that behaves like an object store (gs://, s3://): URLs
`objstore://KEY`, a flat key space without directories (`has_dirs` is False, `mkdirs`
does nothing, a prefix ending in / is deleted recursively), each object a file under
`ROOT` named after its quoted key. Beam finds it by its scheme once this module is
imported, in this process only: use it with DirectRunner's in_memory mode."""

import os
import shutil
from urllib.parse import quote, unquote

from apache_beam.io.filesystem import (BeamIOError, CompressedFile, CompressionTypes,
                                       FileMetadata, FileSystem)

SCHEME = "objstore"
ROOT = None  # the directory holding the objects: set it before use


def keys():
    """Every key in the store, sorted."""
    return sorted(unquote(name) for name in os.listdir(ROOT))


def _key(url):
    return url[len(f"{SCHEME}://"):]


def _file(url):
    return os.path.join(ROOT, quote(_key(url), safe=""))


class ObjectStore(FileSystem):
    """objstore://KEY: see the module's docstring."""

    @classmethod
    def scheme(cls):
        return SCHEME

    def join(self, basepath, *paths):
        return "/".join([basepath.rstrip("/"), *(p.strip("/") for p in paths)])

    def split(self, path):
        head, _, tail = path.rstrip("/").rpartition("/")
        return head, tail

    def mkdirs(self, path):
        pass

    def has_dirs(self):
        return False

    def _list(self, dir_or_prefix):
        for key in keys():
            url = f"{SCHEME}://{key}"
            if url.startswith(dir_or_prefix):
                yield self.metadata(url)

    def create(self, path, mime_type="application/octet-stream",
               compression_type=CompressionTypes.AUTO):
        return self._open(path, "wb", compression_type)

    def open(self, path, mime_type="application/octet-stream",
             compression_type=CompressionTypes.AUTO):
        return self._open(path, "rb", compression_type)

    def _open(self, path, mode, compression_type):
        raw = open(_file(path), mode)  # noqa: SIM115 (the caller closes it)
        compression_type = self._get_compression_type(path, compression_type)
        if compression_type == CompressionTypes.UNCOMPRESSED:
            return raw
        return CompressedFile(raw, compression_type=compression_type)

    def copy(self, source_file_names, destination_file_names):
        self._each(shutil.copyfile, source_file_names, destination_file_names)

    def rename(self, source_file_names, destination_file_names):
        self._each(os.replace, source_file_names, destination_file_names)

    @staticmethod
    def _each(operation, sources, destinations):
        failed = {}
        for source, destination in zip(sources, destinations):
            try:
                operation(_file(source), _file(destination))
            except OSError as error:
                failed[(source, destination)] = error
        if failed:
            raise BeamIOError("operation failed", failed)

    def exists(self, path):
        return os.path.exists(_file(path))

    def size(self, path):
        return os.path.getsize(_file(path))

    def last_updated(self, path):
        return os.path.getmtime(_file(path))

    def checksum(self, path):
        return str(self.size(path))

    def metadata(self, path):
        if not self.exists(path):
            raise BeamIOError("no such object", {path: FileNotFoundError(path)})
        return FileMetadata(path, self.size(path), self.last_updated(path))

    def delete(self, paths):
        failed = {}
        for path in paths:
            urls = [m.path for m in self._list(path)] if path.endswith("/") else [path]
            for url in urls:
                try:
                    os.unlink(_file(url))
                except OSError as error:
                    failed[url] = error
        if failed:
            raise BeamIOError("delete failed", failed)

