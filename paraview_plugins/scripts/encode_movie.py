"""pvpython script behind `tview render --animate --out X.avi|X.ogv`: the PNG frames of a folder (frame_*.png,
in order) encoded with ParaView's own writers (FFMPEG for .avi, Ogg Theora for .ogv); no network, no ffmpeg."""

import glob
import os
import sys

from vtkmodules.vtkIOImage import vtkPNGReader


def writer_for(out):
    if out.lower().endswith(".ogv"):
        from vtkmodules.vtkIOOggTheora import vtkOggTheoraWriter
        return vtkOggTheoraWriter()
    from vtkmodules.vtkIOFFMPEG import vtkFFMPEGWriter
    w = vtkFFMPEGWriter()
    w.SetBitRate(4000000)
    return w


def main():
    folder, out = sys.argv[1], sys.argv[2]
    frames = sorted(glob.glob(os.path.join(folder, "frame_*.png")))
    if not frames:
        print(f"no frame_*.png in {folder}", file=sys.stderr)
        sys.exit(2)
    reader, writer = vtkPNGReader(), writer_for(out)
    reader.SetFileName(frames[0])
    reader.Update()
    writer.SetInputConnection(reader.GetOutputPort())
    writer.SetFileName(out)
    writer.SetRate(10)
    writer.Start()
    for frame in frames:
        reader.SetFileName(frame)
        reader.Update()
        writer.Write()
    writer.End()
    print(f"wrote {out}: {len(frames)} frames")


main()
